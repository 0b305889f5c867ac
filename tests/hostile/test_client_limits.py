"""--max-client-conn: a client over the limit is told ``FATAL 53300 sorry, too many clients
already`` right after its startup packet, as PostgreSQL does, without any TLS work and
without a server connection; its CancelRequest is still forwarded. Every open client
connection counts, whatever its phase. Refusals are logged, rate-limited."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess, raw_socket, wait_until
from tests.rawpg import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    read_error_then_close,
    startup_packet,
)

StartProxy = Callable[..., ProxyProcess]
LIMIT = 3
REFUSAL_LINE = "too many clients already (max-client-conn 3)"


@pytest.fixture
def limited(start_proxy: StartProxy, certs: dict[str, Path]) -> ProxyProcess:
    return start_proxy(
        "--max-client-conn",
        str(LIMIT),
        "--tls-cert",
        str(certs["cert"]),
        "--tls-key",
        str(certs["key"]),
    )


@pytest.fixture
def full(limited: ProxyProcess) -> Iterator[list[psycopg.Connection]]:
    """``LIMIT`` sessions open through the proxy."""
    with ExitStack() as stack:
        sessions = [
            stack.enter_context(psycopg.connect(limited.dsn(), autocommit=True))
            for _ in range(LIMIT)
        ]
        yield sessions


def assert_too_many(fields: dict[str, str] | None) -> None:
    assert fields is not None, "closed without an ErrorResponse"
    assert (fields["S"], fields["C"], fields["M"]) == (
        "FATAL",
        "53300",
        "sorry, too many clients already",
    )


def served(proxy: ProxyProcess) -> bool:
    """A new client is served (the proxy may not have seen others leave yet)."""
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
            return conn.execute("select 'admitted'").fetchone() == ("admitted",)
    except psycopg.OperationalError as exc:
        assert "sorry, too many clients already" in str(exc)
        return False


def opened_lines(proxy: ProxyProcess) -> int:
    return proxy.log().count(" opened ")


def test_client_over_the_limit_is_refused_like_postgres(
    limited: ProxyProcess, full: list[psycopg.Connection], pg: PgServer
) -> None:
    with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
        psycopg.connect(limited.dsn(application_name="refused"), connect_timeout=5)
    # Encryption requests are answered 'N' although the proxy has a certificate.
    for request in (SSL_REQUEST, GSSENC_REQUEST):
        with raw_socket(limited.host, limited.port) as sock:
            sock.sendall(request)
            assert sock.recv(1) == b"N"
            sock.sendall(startup_packet(pg.user, application_name="refused"))
            assert_too_many(read_error_then_close(sock))
    assert opened_lines(limited) == LIMIT  # no server connection for a refused client
    assert "app=refused" not in limited.log()
    assert limited.log().count(REFUSAL_LINE) == 1  # three refusals, one line
    for session in full:
        assert session.execute("select 1").fetchone() == (1,)
    # One leaves: the next client is served.
    full[0].close()
    wait_until(lambda: served(limited), 10, "room for a new client")


def test_every_phase_counts(limited: ProxyProcess, pg: PgServer) -> None:
    with ExitStack() as stack:
        for _ in range(LIMIT):  # connected, not a byte sent: still clients
            stack.enter_context(raw_socket(limited.host, limited.port))
        with raw_socket(limited.host, limited.port) as sock:
            sock.sendall(startup_packet(pg.user))
            assert_too_many(read_error_then_close(sock))
    wait_until(lambda: served(limited), 10, "room again once they left")


def test_cancel_request_over_the_limit_is_forwarded(
    limited: ProxyProcess, full: list[psycopg.Connection], admin: psycopg.Connection
) -> None:
    busy = full[0]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            busy.execute("select pg_sleep(30)")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    pid = busy.info.backend_pid

    def active() -> bool:
        admin.execute("select pg_stat_clear_snapshot()")
        row = admin.execute("select state from pg_stat_activity where pid = %s", (pid,))
        return row.fetchone() == ("active",)

    wait_until(active, 10, "the query to run")
    busy.cancel()  # a new connection to the proxy: the fourth
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled)
    assert busy.execute("select 'after cancel'").fetchone() == ("after cancel",)
