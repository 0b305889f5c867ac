"""Shared helpers of the benchmarks: the PostgreSQL, PgBouncer and proxy processes.

Every process listens on a fresh 127.0.0.1 port and lives in a temp directory; the
context managers stop what they started. When we run as root, PostgreSQL (through
:class:`proxy.embedded.EmbeddedPostgres`) and PgBouncer (which refuses root) run as an
unprivileged OS user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.embedded import SERVICE_USER, EmbeddedPostgres, bundled_bin_dir, free_port  # noqa: E402


@dataclass(frozen=True)
class Target:
    """Something a client can connect to: direct PostgreSQL, PgBouncer or the proxy."""

    name: str
    host: str
    port: int
    pid: int | None = None  # the process to watch (RSS, CPU); None for an external server

    def dsn(self, dbname: str, user: str) -> str:
        return (
            f"host={self.host} port={self.port} dbname={dbname} user={user} "
            "sslmode=disable gssencmode=disable"
        )


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise SystemExit(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        soft = limit
    return soft


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once ``host:port`` accepts TCP connections; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host}:{port} not accepting after {timeout} s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid`` (its own threads only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` plus that of its live descendants (the workers of
    ``python -m proxy --workers N`` are children of the supervisor whose pid we hold)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
        todo.extend(children.get(current, ()))
    return total


def find_program(name: str) -> Path | None:
    """``name`` on PATH, else in the embedded PostgreSQL's bin directory."""
    found = shutil.which(name)
    if found:
        return Path(found)
    with contextlib.suppress(Exception):
        candidate = bundled_bin_dir() / name
        if candidate.exists():
            return candidate
    return None


@contextlib.contextmanager
def postgres(
    upstream: str | None,
    settings: dict[str, str] | None = None,
    hba_lines: tuple[str, ...] = (),
) -> Iterator[tuple[Target, Path]]:
    """The server to measure against: ``upstream`` as given, or a fresh embedded cluster
    (whose pg_hba.conf starts with ``hba_lines``, e.g. a role that must give a password).

    Yields the direct target and a scratch directory for the other processes' files.
    """
    scratch = Path(tempfile.mkdtemp(prefix="pgdp-bench-"))
    scratch.chmod(0o755)
    try:
        if upstream:
            host, port = parse_hostport(upstream)
            yield Target("direct", host, port), scratch
            return
        server = EmbeddedPostgres(scratch / "pgdata", settings=settings, hba_lines=hba_lines)
        print(f"starting embedded PostgreSQL in {server.datadir} ...", file=sys.stderr)
        server.start()
        try:
            pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
            yield Target("direct", server.host, server.port, pid), scratch
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def proxy(
    upstream: Target,
    scratch: Path,
    *,
    log_level: str = "warning",
    extra_args: tuple[str, ...] = (),
) -> Iterator[Target]:
    """``python -m proxy`` of this checkout in a subprocess, relaying to ``upstream``."""
    with proxy_from(ROOT, upstream, scratch, log_level=log_level, extra_args=extra_args) as run:
        yield run.target


@contextlib.contextmanager
def pump(upstream: Target, scratch: Path) -> Iterator[Target]:
    """``bench/pump.py`` (a blind uvloop byte relay) in a subprocess, relaying to
    ``upstream``: the floor for the proxy's CPU per transaction."""
    port = free_port()
    logfile = scratch / f"pump-{port}.log"
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "pump.py"),
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"{upstream.host}:{upstream.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            wait_port("127.0.0.1", port, 30, proc)
            yield Target("pump", "127.0.0.1", port, proc.pid)
        finally:
            died = proc.poll()
            stop_process(proc)
            if died is not None:
                tail = logfile.read_text(errors="replace")[-3000:]
                print(f"pump exited early with status {died}; log tail:\n{tail}", file=sys.stderr)


def find_pgbouncer() -> Path | None:
    """``pgbouncer`` on PATH, else where Debian's package puts it (/usr/sbin, which is not
    on an ordinary user's PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/pgbouncer"), Path("/usr/local/sbin/pgbouncer")):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in (SERVICE_USER, "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged user to run PgBouncer as")


@contextlib.contextmanager
def pgbouncer(
    upstream: Target, scratch: Path, *, user: str, max_client_conn: int = 200, pool_size: int = 100
) -> Iterator[Target | None]:
    """PgBouncer in session mode in front of ``upstream``; ``None`` if it is not installed."""
    program = find_pgbouncer()
    if program is None:
        yield None
        return
    port = free_port()
    workdir = scratch / f"pgbouncer-{port}"
    workdir.mkdir()
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={upstream.host} port={upstream.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'userlist.txt'}",
                "pool_mode = session",
                f"max_client_conn = {max_client_conn}",
                f"default_pool_size = {pool_size}",
                f"max_db_connections = {pool_size}",
                "log_connections = 0",
                "log_disconnections = 0",
                "log_pooler_errors = 1",
                f"logfile = {workdir / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    account = _unprivileged_user()
    kwargs: dict[str, object] = {}
    if account is not None:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
    proc = subprocess.Popen(
        [program, str(workdir / "pgbouncer.ini")],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        try:
            wait_port("127.0.0.1", port, 15, proc)
        except RuntimeError:
            log = workdir / "pgbouncer.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PgBouncer did not start:\n{tail}") from None
        yield Target("pgbouncer", "127.0.0.1", port, proc.pid)
    finally:
        stop_process(proc, signal.SIGTERM)  # PgBouncer: SIGTERM = immediate shutdown


# --- additions for bench_hostile.py: proxies from another source tree, password roles ---


def status_kb(pid: int, field: str) -> int | None:
    """A ``Vm*`` field of ``/proc/PID/status`` in KiB (``VmRSS``, ``VmHWM``...); None once
    the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def check_proxy_source(src: Path) -> None:
    """Fail unless ``python -m proxy`` run from ``src`` (cwd and PYTHONPATH) imports the
    proxy and grammar packages of ``src``, not those of the installed checkout."""
    found = subprocess.run(
        [sys.executable, "-c", "import proxy, grammar; print(proxy.__file__, grammar.__file__)"],
        cwd=src,
        env=dict(os.environ, PYTHONPATH=str(src)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in found:
        if not Path(path).resolve().is_relative_to(src.resolve()):
            raise RuntimeError(f"proxy from {src} would import {path}")


@dataclass(frozen=True)
class ProxyRun:
    """A proxy subprocess started by :func:`proxy_from`."""

    target: Target
    process: subprocess.Popen
    logfile: Path


@contextlib.contextmanager
def proxy_from(
    src: Path,
    upstream: Target,
    scratch: Path,
    *,
    log_level: str = "warning",
    extra_args: tuple[str, ...] = (),
) -> Iterator[ProxyRun]:
    """``python -m proxy`` from the source tree ``src`` (its cwd and PYTHONPATH), relaying
    to ``upstream``; the caller gets the process too (to kill it)."""
    port = free_port()
    logfile = scratch / f"proxy-{port}.log"
    log = open(logfile, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{upstream.host}:{upstream.port}",
            "--log-level",
            log_level,
            *extra_args,
        ],
        cwd=src,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONPATH=str(src)),
    )
    try:
        wait_port("127.0.0.1", port, 30, proc)
        yield ProxyRun(Target("proxy", "127.0.0.1", port, proc.pid), proc, logfile)
    finally:
        died = proc.poll()
        stop_process(proc)
        log.close()
        if died is not None:
            tail = logfile.read_text(errors="replace")[-3000:]
            print(f"proxy exited early with status {died}; log tail:\n{tail}", file=sys.stderr)


@contextlib.contextmanager
def embedded_postgres(
    settings: dict[str, str] | None = None, hba_lines: tuple[str, ...] = ()
) -> Iterator[tuple[Target, Path]]:
    """A fresh embedded cluster (see :func:`postgres`)."""
    with postgres(None, settings, hba_lines) as server:
        yield server
