"""Malformed input that a parser does not catch must still never raise out of a protocol
callback: the connection that sent it is closed (with FATAL 08P01 where the parser knows
the input is invalid), one log line says why, no traceback, every other session goes on.
"""

from __future__ import annotations

import struct

import psycopg

from tests.conftest import PgServer, ProxyProcess, backend_pids, raw_socket, wait_until
from tests.rawpg import handshake, read_error_then_close


def parse_without_terminator(text: bytes) -> bytes:
    """A Parse message whose query string has no NUL (and no parameter count)."""
    body = b"\0" + text  # unnamed statement, then the unterminated query
    return b"P" + struct.pack("!I", len(body) + 4) + body


def test_parse_with_unterminated_clean_connection(
    proxy: ProxyProcess, admin: psycopg.Connection, pg: PgServer
) -> None:
    app = "unterminated-parse"
    with proxy.connect() as bystander, raw_socket(proxy.host, proxy.port) as sock:
        handshake(sock, pg.user, app)
        sock.sendall(parse_without_terminator(b"clean connection to all for database x"))
        fields = read_error_then_close(sock)  # fails on anything but an error and a close
        if fields is not None:
            assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
        wait_until(lambda: not backend_pids(admin, app), 10, "the backend to go away")
        assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)
    log = proxy.log()
    assert "Traceback" not in log
    assert "protocol violation" in log or "internal error on client data" in log
