"""--workers N: several processes share the listen port; cancels work across them."""

from __future__ import annotations

import re
import signal
import threading

import psycopg
import pytest

from tests.conftest import ProxyProcess, wait_until


@pytest.fixture
def two_workers(start_proxy) -> ProxyProcess:
    return start_proxy("--workers", "2")


def worker_pids(proxy: ProxyProcess) -> set[int]:
    return {
        int(pid) for pid in re.findall(r"pgdp\.session\[(\d+)\] conn=\d+ .* opened", proxy.log())
    }


def test_connections_spread_over_the_workers(two_workers: ProxyProcess) -> None:
    connections = [two_workers.connect() for _ in range(24)]
    try:
        for i, conn in enumerate(connections):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        # The kernel hashes connections over both listeners: all 24 on one has p = 2**-23.
        pids = wait_until(
            lambda: worker_pids(two_workers) if len(worker_pids(two_workers)) == 2 else None, 10
        )
        assert two_workers.process.pid not in pids
    finally:
        for conn in connections:
            conn.close()


def test_cancel_reaches_the_session_whichever_worker_gets_it(two_workers: ProxyProcess) -> None:
    for _ in range(6):  # each cancel is a new connection, hashed to either worker
        with two_workers.connect() as conn:
            timer = threading.Timer(0.2, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
            assert conn.execute("select 1").fetchone() == (1,)


def test_sigterm_stops_every_worker(two_workers: ProxyProcess) -> None:
    with two_workers.connect() as conn:
        conn.execute("select 1")
    assert two_workers.stop(signal.SIGTERM) == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(two_workers.dsn(), connect_timeout=2)


def test_a_crashed_worker_is_replaced(two_workers: ProxyProcess) -> None:
    import os

    with two_workers.connect() as conn:
        conn.execute("select 1")
    pids = worker_pids(two_workers)
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "exited with -9; starting it again" in two_workers.log(), 10, "the restart")
    for _ in range(10):
        with two_workers.connect() as conn:
            assert conn.execute("select 2").fetchone() == (2,)
