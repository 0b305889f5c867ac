"""Faults: an unreachable or restarting upstream, clients that vanish, malformed packets,
encryption requests. Each time the failing connection gets a proper error (or is closed)
and the proxy keeps serving everyone else; no traceback reaches its log (``start_proxy``
checks that at teardown)."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable

import psycopg
import pytest

from proxy.embedded import free_port
from tests.conftest import PgServer, ProxyProcess, backend_pids, raw_socket, wait_until
from tests.rawpg import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    handshake,
    query_message,
    read_error_then_close,
    read_message,
    read_until_ready,
    startup_packet,
)

StartProxy = Callable[..., ProxyProcess]


def assert_serving(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        assert conn.execute("select 'alive'").fetchone() == ("alive",)


# --- upstream ------------------------------------------------------------------------


def test_upstream_unreachable(start_proxy: StartProxy, pg: PgServer) -> None:
    closed = f"127.0.0.1:{free_port()}"
    proxy = start_proxy("--connect-timeout", "2", upstream=closed)
    for _ in range(2):
        with raw_socket(proxy.host, proxy.port) as sock:
            sock.sendall(startup_packet(pg.user))
            fields = read_error_then_close(sock)
        assert fields is not None
        assert fields["C"] == "08001"
        assert closed in fields["M"]
        assert fields["S"] == "FATAL"
    with pytest.raises(psycopg.OperationalError, match=closed):
        psycopg.connect(proxy.dsn(), connect_timeout=5)
    assert proxy.process.poll() is None


def test_upstream_restarted_mid_session(start_proxy: StartProxy, pg: PgServer) -> None:
    if not pg.controllable:
        pytest.skip("needs a server the tests can restart")
    proxy = start_proxy()
    conn = proxy.connect()
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        pg.embedded.restart()  # type: ignore[union-attr]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    assert proxy.process.poll() is None
    assert_serving(proxy)


def test_upstream_stopped_then_back(start_proxy: StartProxy, pg: PgServer) -> None:
    if not pg.controllable:
        pytest.skip("needs a server the tests can stop")
    proxy = start_proxy()
    conn = proxy.connect()
    embedded = pg.embedded
    assert embedded is not None
    try:
        embedded.stop("fast")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        with raw_socket(proxy.host, proxy.port) as sock:
            sock.sendall(startup_packet(pg.user))
            fields = read_error_then_close(sock)
        assert fields is not None and fields["C"] == "08001"
    finally:
        conn.close()
        embedded.start()
    assert_serving(proxy)


# --- clients that vanish ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_vanishes_mid_result(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer, how: str
) -> None:
    app = f"vanish-{how}"
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    try:
        handshake(sock, pg.user, app)
        sock.sendall(
            query_message(
                "select g, repeat('x', 1000) from (select generate_series(1, 100000000) g) s"
            )
        )
        first = read_message(sock)
        assert first is not None and first[0] == b"T"
        assert len(sock.recv(65536)) > 0
        assert backend_pids(admin, app)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
    assert_serving(proxy)


# --- malformed packets ---------------------------------------------------------------


STARTUP_GARBAGE = {
    "length-4": struct.pack("!II", 4, 3 << 16),
    "length-7": struct.pack("!I", 7) + b"\0\0\0",
    "length-huge": struct.pack("!II", 10_001, 3 << 16) + b"\0" * 100,
    "protocol-2": struct.pack("!II", 8, 2 << 16),
    "protocol-4": startup_packet("u").replace(
        struct.pack("!I", 3 << 16), struct.pack("!I", 4 << 16)
    ),
    "unknown-request": struct.pack("!II", 8, 80877199),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "random": bytes((i * 193 + 71) % 256 for i in range(300)),
    "ssl-then-garbage": SSL_REQUEST + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("name", sorted(STARTUP_GARBAGE))
def test_malformed_startup(proxy: ProxyProcess, name: str) -> None:
    with proxy.connect() as bystander:
        bystander.execute("select 1")
        with raw_socket(proxy.host, proxy.port) as sock:
            data = STARTUP_GARBAGE[name]
            sock.sendall(data)
            if data.startswith(SSL_REQUEST):
                assert sock.recv(1) == b"N"
            fields = read_error_then_close(sock)
        assert fields is not None, "no ErrorResponse before the close"
        assert fields["C"] == "08P01"
        assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)
    assert_serving(proxy)


@pytest.mark.parametrize(
    "message",
    [b"Q\0\0\0\x00", b"Q\0\0\0\x03", b"S\0\0\0\x02", b"d\xff\xff\xff\xff"],
    ids=["Q-0", "Q-3", "S-2", "d-4GB"],
)
def test_malformed_message_when_ready(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer, message: bytes
) -> None:
    app = f"malformed-{message[:1].decode()}-{message[-1]}"
    with proxy.connect() as bystander, raw_socket(proxy.host, proxy.port) as sock:
        handshake(sock, pg.user, app)
        sock.sendall(message)
        fields = read_error_then_close(sock)
        assert fields is not None and fields["C"] == "08P01"
        wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
        assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)


def test_message_above_max_message_size(
    start_proxy: StartProxy, admin: psycopg.Connection, pg: PgServer
) -> None:
    proxy = start_proxy("--max-message-size", "65536")
    with proxy.connect() as bystander, raw_socket(proxy.host, proxy.port) as sock:
        handshake(sock, pg.user, "too-big")
        # Just under the limit passes.
        sock.sendall(query_message("select '" + "y" * 60_000 + "' is not null"))
        assert read_until_ready(sock)[-1][0] == b"Z"
        # The proxy may close before we finish sending; its reply is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(query_message("select '" + "x" * 100_000 + "'"))
        fields = read_error_then_close(sock)
        assert fields is not None and fields["C"] == "08P01"
        assert "length" in fields["M"]
        wait_until(lambda: not backend_pids(admin, "too-big"), 10, "the backend to go away")
        assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)
    assert "protocol violation" in proxy.log()


# --- encryption requests -------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_encryption_request_refused_then_startup(
    proxy: ProxyProcess, pg: PgServer, request_bytes: bytes
) -> None:
    with raw_socket(proxy.host, proxy.port) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(1) == b"N"
        handshake(sock, pg.user, "after-refusal")
        sock.sendall(query_message("select 42"))
        replies = read_until_ready(sock)
        assert [kind for kind, _ in replies] == [b"T", b"D", b"C", b"Z"]


def test_gssenc_then_ssl_then_startup(proxy: ProxyProcess, pg: PgServer) -> None:
    with raw_socket(proxy.host, proxy.port) as sock:
        sock.sendall(GSSENC_REQUEST)
        assert sock.recv(1) == b"N"
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"N"
        handshake(sock, pg.user)


@pytest.mark.parametrize("sslmode", ["prefer", "disable", "allow"])
def test_libpq_sslmodes_that_work(proxy: ProxyProcess, sslmode: str) -> None:
    with psycopg.connect(proxy.dsn(sslmode=sslmode), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False


def test_libpq_sslmode_require_fails_cleanly(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(proxy.dsn(sslmode="require"), connect_timeout=5)
    assert_serving(proxy)
