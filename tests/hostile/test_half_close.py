"""A client that half-closes (shutdown(SHUT_WR)) while the server streams a large result
and then reads no more. No PostgreSQL client half-closes on purpose: the proxy must end
the server leg at once, not wait to flush to a socket nobody reads while the backend
lives on until the client's process exits."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

import psycopg

from tests.conftest import PgServer, ProxyProcess, backend_pids, wait_until
from tests.rawpg import handshake, query_message, read_message


def unread_bytes(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


def wait_events(admin: psycopg.Connection, app: str) -> list[str | None]:
    admin.execute("select pg_stat_clear_snapshot()")
    rows = admin.execute(
        "select wait_event from pg_stat_activity where application_name = %s", (app,)
    ).fetchall()
    return [row[0] for row in rows]


def test_half_close_mid_result_ends_the_backend(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer
) -> None:
    app = "half-close"
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        handshake(sock, pg.user, app)
        sock.sendall(
            query_message(
                "select g, repeat('x', 1000) from (select generate_series(1, 100000000) g) s"
            )
        )
        first = read_message(sock)
        assert first is not None and first[0] == b"T"
        assert len(sock.recv(65536)) > 0
        # Reading no more: once our receive buffer stops filling and the backend is blocked
        # writing, the proxy holds bytes for this client that it can never deliver.
        unread = [-1]

        def saturated() -> bool:
            before, unread[0] = unread[0], unread_bytes(sock)
            return unread[0] == before and wait_events(admin, app) == ["ClientWrite"]

        wait_until(saturated, 10, "the backend to block writing")
        sock.shutdown(socket.SHUT_WR)
        # Read nothing more, keep the socket open: only the proxy can end the backend.
        wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
    with proxy.connect() as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)


def test_terminate_then_half_close_reaches_the_server(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer
) -> None:
    """Terminate, then shutdown(SHUT_WR): the Terminate still reaches the server, which
    ends the session normally."""
    app = "terminate-half-close"
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        handshake(sock, pg.user, app)
        assert backend_pids(admin, app)
        sock.sendall(b"X\0\0\0\x04")
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
        assert sock.recv(100) == b""
