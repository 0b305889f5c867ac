"""SIGTERM, then --shutdown-timeout: sessions still open are told ``FATAL 57P01
terminating connection due to administrator command`` (PostgreSQL's words for a session
ended by a shutdown) where a reply is possible, then closed with their server legs."""

from __future__ import annotations

import signal
from collections.abc import Callable

import psycopg

from tests.conftest import PgServer, ProxyProcess, backend_pids, raw_socket, wait_until
from tests.rawpg import handshake, read_error_then_close

StartProxy = Callable[..., ProxyProcess]


def test_sessions_left_at_shutdown_timeout_are_told(
    start_proxy: StartProxy, admin: psycopg.Connection, pg: PgServer
) -> None:
    proxy = start_proxy("--shutdown-timeout", "1")
    app = "left-at-shutdown"
    with (
        raw_socket(proxy.host, proxy.port) as idle,
        raw_socket(proxy.host, proxy.port) as starting,
    ):
        handshake(idle, pg.user, app)
        assert backend_pids(admin, app)
        wait_until(lambda: " opened " in proxy.log(), 10, "the session to be logged")
        proxy.process.send_signal(signal.SIGTERM)
        for sock in (idle, starting):  # logged in, and not even a startup packet sent
            fields = read_error_then_close(sock)
            assert fields is not None, "closed without an ErrorResponse"
            assert (fields["S"], fields["C"], fields["M"]) == (
                "FATAL",
                "57P01",
                "terminating connection due to administrator command",
            )
        wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
    assert proxy.process.wait(10) == 0
    assert "closing 2 sessions still open" in proxy.log()
