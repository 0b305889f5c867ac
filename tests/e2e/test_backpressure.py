"""Flow control: a client that stops reading a huge result must stall the server, not grow
the proxy's memory; and everything must flow again once it reads."""

from __future__ import annotations

import select
import socket
import struct

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess, backend_pids, wait_until
from tests.rawpg import handshake, query_message, read_message

# About 2 GB if it were all read; streamed row by row (set-returning function in the target
# list, so the server does not materialise it first).
HUGE_QUERY = "select g, repeat('x', 1000) from (select generate_series(1, 2000000) g) s"
RSS_GROWTH_LIMIT_KB = 20 * 1024


def wait_event(admin: psycopg.Connection, app: str) -> str | None:
    row = admin.execute(
        "select wait_event from pg_stat_activity where application_name = %s", (app,)
    ).fetchone()
    return row[0] if row else None


def server_blocked_on_client(admin: psycopg.Connection, app: str, samples: int = 8) -> bool:
    """True once the backend is seen waiting in ClientWrite ``samples`` polls in a row: a
    server that only now and then outruns its reader would not be."""
    streak = 0

    def check() -> bool:
        nonlocal streak
        streak = streak + 1 if wait_event(admin, app) == "ClientWrite" else 0
        return streak >= samples

    return bool(wait_until(check, 30, f"{app}'s backend to block in ClientWrite"))


def test_client_that_stops_reading_stalls_server_not_proxy(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer
) -> None:
    app = "stops-reading"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect((proxy.host, proxy.port))
    try:
        handshake(sock, pg.user, app)
        rss_before = proxy.rss_kb()
        sock.sendall(query_message(HUGE_QUERY))
        first = read_message(sock)
        assert first is not None and first[0] == b"T"
        read = 0
        while read < 1_000_000:  # read a little, then stop
            read += len(sock.recv(65536))
        server_blocked_on_client(admin, app)
        growth = proxy.rss_kb() - rss_before
        assert growth < RSS_GROWTH_LIMIT_KB, f"proxy RSS grew by {growth} kB"
        # Still blocked, still bounded.
        assert wait_event(admin, app) == "ClientWrite"
        assert proxy.rss_kb() - rss_before < RSS_GROWTH_LIMIT_KB
    finally:
        sock.close()
    wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_slow_reader_gets_everything(proxy: ProxyProcess, admin: psycopg.Connection) -> None:
    """Pause and resume many times over: the result arrives complete and in order."""
    app = "slow-reader"
    # 60 MB: more than the kernel may buffer on the way (the proxy's receive buffer from the
    # server autotunes up to tcp_rmem's maximum, 32 MB here), so the backend must block.
    rows = 60_000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(10)
    sock.connect((proxy.host, proxy.port))
    try:
        handshake(sock, proxy.upstream.user, app)  # type: ignore[union-attr]
        sock.sendall(
            query_message(
                f"select g, repeat(chr(65 + g % 26), 1000) from generate_series(1, {rows}) g"
            )
        )
        server_blocked_on_client(admin, app, samples=3)
        seen = 0
        while True:
            msg = read_message(sock)
            assert msg is not None
            kind, body = msg
            if kind == b"D":
                seen += 1
                text = body.split(b"\0\0\x03\xe8", 1)[1]
                assert text == bytes((65 + seen % 26,)) * 1000
            elif kind == b"Z":
                break
        assert seen == rows
    finally:
        sock.close()


def send_until_blocked(sock: socket.socket, chunk: bytes, limit: int = 400_000_000) -> int:
    """Send ``chunk`` repeatedly until the peer has stopped reading: the socket stays
    unwritable for a whole second. Returns the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(chunk)
    offset = 0
    while sent < limit:
        try:
            count = sock.send(view[offset:])
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                return sent
            continue
        sent += count
        offset = (offset + count) % len(chunk)
    pytest.fail(f"the proxy kept reading: {sent} bytes")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_blocked_both_ways_then_vanishes(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer, how: str
) -> None:
    """The server blocks writing a result the client does not read, the client blocks
    writing queries the server does not read, then the client goes away: its backend must
    go too (directly connected, the server's send would fail; through the proxy, the
    proxy's buffered writes must not keep the server connection open)."""
    app = f"blocked-both-{how}"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect((proxy.host, proxy.port))
    try:
        handshake(sock, pg.user, app)
        sock.sendall(query_message(HUGE_QUERY))
        server_blocked_on_client(admin, app, samples=3)
        send_until_blocked(sock, query_message("select 1") * 100_000)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    wait_until(lambda: not backend_pids(admin, app), 15, "the backend to go away")
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
