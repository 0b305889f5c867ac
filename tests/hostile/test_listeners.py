"""The proxy's own accept loop on a Unix-domain socket: clients are served, a stale socket
file left by a killed proxy is replaced, SIGTERM closes the listener and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO, PgServer, wait_until


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sock")  # short: socket paths are limited to 107 bytes


@pytest.fixture
def launch_unix(pg: PgServer, socket_dir: Path, tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def launch(name: str) -> tuple[subprocess.Popen, Path]:
        logfile = tmp_path / f"{name}.log"
        with open(logfile, "wb") as handle:
            args = ["--listen", str(socket_dir), "--upstream", f"{pg.host}:{pg.port}"]
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        started.append(process)
        wait_until(lambda: "listening on" in logfile.read_text(), 30, "the proxy to listen")
        return process, logfile

    yield launch
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def query_through(socket_dir: Path, pg: PgServer) -> object:
    dsn = f"host={socket_dir} port=6432 user={pg.user} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("select 'over unix'").fetchone()[0]


def test_unix_socket_listener(launch_unix, socket_dir: Path, pg: PgServer) -> None:
    killed, _ = launch_unix("killed")
    assert query_through(socket_dir, pg) == "over unix"
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    assert (socket_dir / ".s.PGSQL.6432").is_socket()  # left behind
    proxy, logfile = launch_unix("second")
    assert query_through(socket_dir, pg) == "over unix"
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(10) == 0
    log = logfile.read_text()
    assert f"listening on {socket_dir}/.s.PGSQL.6432" in log
    assert "Traceback" not in log
