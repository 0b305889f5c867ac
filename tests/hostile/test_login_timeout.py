"""--client-login-timeout: a client that connects and never finishes logging in (silent,
half a startup packet, stuck after an SSLRequest, in the TLS handshake or in the
authentication exchange) is disconnected, as PostgreSQL's authentication_timeout does:
FATAL 57014 ``canceling authentication due to timeout`` where a reply is possible, one
log line, and no backend left behind."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess, raw_socket, wait_until
from tests.rawpg import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    read_error_then_close,
    read_message,
    startup_packet,
)

StartProxy = Callable[..., ProxyProcess]
TIMEOUT_TEXT = "canceling authentication due to timeout"


@pytest.fixture
def impatient(start_proxy: StartProxy, certs: dict[str, Path]) -> ProxyProcess:
    return start_proxy(
        "--client-login-timeout",
        "1",
        "--tls-cert",
        str(certs["cert"]),
        "--tls-key",
        str(certs["key"]),
    )


def assert_told_timeout(sock: socket.socket) -> None:
    fields = read_error_then_close(sock)
    assert fields is not None, "closed without an ErrorResponse"
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "57014", TIMEOUT_TEXT)


def timeout_lines(proxy: ProxyProcess) -> list[str]:
    return [line for line in proxy.log().splitlines() if TIMEOUT_TEXT in line]


@pytest.mark.parametrize(
    "sent",
    [b"", startup_packet("u")[:11], GSSENC_REQUEST],
    ids=["silent", "half-startup-packet", "after-gssenc-refused"],
)
def test_client_that_never_finishes_startup(impatient: ProxyProcess, sent: bytes) -> None:
    with raw_socket(impatient.host, impatient.port, timeout=5) as sock:
        sock.sendall(sent)
        if sent == GSSENC_REQUEST:
            assert sock.recv(1) == b"N"
        assert_told_timeout(sock)
    assert len(timeout_lines(impatient)) == 1


def test_client_stalled_in_tls_handshake(impatient: ProxyProcess) -> None:
    with raw_socket(impatient.host, impatient.port, timeout=5) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        # No ClientHello. Nothing can be said in plaintext inside a handshake: only closed.
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    wait_until(lambda: timeout_lines(impatient), 5, "the timeout line")
    (line,) = timeout_lines(impatient)
    assert "tls" in line
    assert "TLS handshake failed" not in impatient.log()  # one line per connection
    # The connection left the registry: SIGTERM finds no session to wait for.
    assert impatient.stop(signal.SIGTERM, timeout=5) == 0
    assert "waiting up to" not in impatient.log()


def test_client_stalled_in_tls_startup(impatient: ProxyProcess) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with raw_socket(impatient.host, impatient.port, timeout=5) as plain:
        plain.sendall(SSL_REQUEST)
        assert plain.recv(1) == b"S"
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            assert_told_timeout(sock)  # a reply is possible again once TLS is up
    assert len(timeout_lines(impatient)) == 1


def authenticating_backends(user: str) -> list[int]:
    """Server processes of ``user`` still in authentication, from their process titles."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"postgres: " in title and f" {user} ".encode() in title and b"authentication" in title:
            found.append(int(proc.name))
    return found


def test_client_stalled_in_authentication(impatient: ProxyProcess, pg: PgServer) -> None:
    if not pg.controllable:
        pytest.skip("needs a local server whose processes the tests can see")
    with raw_socket(impatient.host, impatient.port, timeout=5) as sock:
        sock.sendall(startup_packet("pw_user", application_name="stalled-auth"))
        assert read_message(sock) == (b"R", b"\0\0\0\x03")  # password, never sent
        assert authenticating_backends("pw_user")
        assert_told_timeout(sock)
    wait_until(lambda: not authenticating_backends("pw_user"), 5, "the backend to go away")
    assert len(timeout_lines(impatient)) == 1


def test_logged_in_sessions_stay(impatient: ProxyProcess, pg: PgServer) -> None:
    password = "pw secret"
    with psycopg.connect(impatient.dsn(user="pw_user", password=password)) as session:
        assert session.execute("select 1").fetchone() == (1,)
        with raw_socket(impatient.host, impatient.port, timeout=5) as late:
            assert_told_timeout(late)  # opened after the session: its timeout has passed
        assert session.execute("select 'still here'").fetchone() == ("still here",)
    assert len(timeout_lines(impatient)) == 1
