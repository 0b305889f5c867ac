"""File descriptors: the proxy raises its soft RLIMIT_NOFILE to the hard limit and says so,
warns when the limit cannot hold --max-client-conn clients, and when accept() fails for
lack of descriptors (EMFILE) it says so once, serves its connected sessions on, and serves
new clients again once descriptors are free. uvloop's own listener silently accepts and
closes the waiting connections instead (libuv's "EMFILE trick")."""

from __future__ import annotations

import functools
import re
import resource
import select
import socket
import subprocess
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import ProxyProcess, wait_until

StartProxy = Callable[..., ProxyProcess]
SOFT, HARD = 40, 64  # the proxy needs about 16 descriptors of its own
ACCEPT_FAILED = "accept failed: Too many open files (EMFILE)"


@pytest.fixture
def start_with_fd_limit(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ProxyProcess]:
    """``start_proxy`` for a proxy process started with RLIMIT_NOFILE = (SOFT, HARD)."""

    def start(*args: str) -> ProxyProcess:
        limit = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (SOFT, HARD))
        with monkeypatch.context() as patch:
            patch.setattr(
                subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=limit)
            )
            return start_proxy(*args)

    return start


def still_open(sock: socket.socket) -> bool:
    """Nothing received and not closed by the peer: not readable."""
    return not select.select([sock], [], [], 0)[0]


def served(proxy: ProxyProcess) -> bool:
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=2) as conn:
            return conn.execute("select 'served'").fetchone() == ("served",)
    except psycopg.OperationalError:
        return False


def test_out_of_file_descriptors(start_with_fd_limit: Callable[..., ProxyProcess]) -> None:
    proxy = start_with_fd_limit()
    log = proxy.log()
    assert f"file descriptor limit {HARD} (soft limit was {SOFT}, hard limit {HARD})" in log
    allowed = re.search(r"file descriptor limit 64 allows about (\d+) clients", log)
    assert allowed is not None and 0 < int(allowed[1]) < 32
    started = time.monotonic()
    with psycopg.connect(proxy.dsn(), autocommit=True) as session:
        idle = []
        try:
            for _ in range(150):  # the kernel completes them all: the backlog is 4096
                idle.append(socket.create_connection((proxy.host, proxy.port), timeout=10))
            wait_until(lambda: ACCEPT_FAILED in proxy.log(), 10, "the accept failure log")
            assert session.execute("select 'still served'").fetchone() == ("still served",)
            # Those not accepted yet wait in the backlog: none was accepted and dropped.
            assert all(still_open(sock) for sock in idle)
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: served(proxy), 10, "new clients to be served again")
        assert session.execute("select 'and still'").fetchone() == ("and still",)
    # Rate-limited: one line at first, then at most one per 10 s.
    lines = proxy.log().count("accept failed:")
    assert 1 <= lines <= 1 + (time.monotonic() - started) // 10
