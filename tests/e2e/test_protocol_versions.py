"""Protocol versions through the proxy: 3.2's long cancel keys, NegotiateProtocolVersion.

The proxy must forward the StartupMessage verbatim (protocol version and ``_pq_.``
options included) and relay the server's answer untouched: PostgreSQL 18 speaks 3.2 with
32-byte cancel keys, older servers answer NegotiateProtocolVersion and use 3.0.
"""

from __future__ import annotations

import socket
import struct

from tests.conftest import PgServer, ProxyProcess, wait_until
from tests.rawpg import error_fields, query_message, read_message, read_until_ready

PROTOCOL_3_2 = (3 << 16) | 2
CANCEL_REQUEST_CODE = 80877102


def startup_3_2(user: str, **params: str) -> bytes:
    pairs = {"user": user, "database": "postgres", **params}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items()) + b"\0"
    return struct.pack("!II", 8 + len(body), PROTOCOL_3_2) + body


def open_3_2(host: str, port: int, user: str) -> tuple[socket.socket, list[tuple[bytes, bytes]]]:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(startup_3_2(user, **{"_pq_.no_such_option": "on", "application_name": "v32"}))
    return sock, read_until_ready(sock)


def summary(messages: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes | int]]:
    """Message types with the parts that must match: NegotiateProtocolVersion body, key length."""
    out: list[tuple[bytes, bytes | int]] = []
    for kind, body in messages:
        if kind == b"v":
            out.append((kind, body))
        elif kind == b"K":
            out.append((kind, len(body) - 4))
        elif kind in (b"R", b"Z"):
            out.append((kind, body))
    return out


def test_protocol_3_2_startup_is_relayed_untouched(pg: PgServer, proxy: ProxyProcess) -> None:
    direct, direct_messages = open_3_2(pg.host, pg.port, pg.user)
    proxied, proxied_messages = open_3_2(proxy.host, proxy.port, pg.user)
    direct.close()
    try:
        assert summary(proxied_messages) == summary(direct_messages)
        negotiate = [body for kind, body in proxied_messages if kind == b"v"]
        assert len(negotiate) == 1 and b"_pq_.no_such_option" in negotiate[0]
        newest_minor = struct.unpack_from("!I", negotiate[0])[0] & 0xFFFF
        key_length = next(len(body) - 4 for kind, body in proxied_messages if kind == b"K")
        if pg.version >= 180000:
            assert (newest_minor, key_length) == (2, 32)
        else:
            assert (newest_minor, key_length) == (0, 4)
        proxied.sendall(query_message("select 41 + 1"))
        rows = [body for kind, body in read_until_ready(proxied) if kind == b"D"]
        assert rows and rows[0].endswith(b"42")
    finally:
        proxied.close()


def test_cancel_request_with_the_servers_key_length(pg: PgServer, proxy: ProxyProcess) -> None:
    sock, messages = open_3_2(proxy.host, proxy.port, pg.user)
    try:
        body = next(body for kind, body in messages if kind == b"K")
        pid, key = struct.unpack_from("!I", body)[0], body[4:]
        sock.sendall(query_message("select pg_sleep(30)"))
        # A cancel that arrives before the query starts is (rightly) ignored: wait for it.
        wait_until(
            lambda: pg.query(
                "select 1 from pg_stat_activity where pid = %s and state = 'active'", (pid,)
            ),
            10,
            "the query to start",
        )
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as canceller:
            packet = struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key
            canceller.sendall(packet)
            assert canceller.recv(1) == b""  # the server answers a cancel by closing
        while True:
            message = read_message(sock)
            assert message is not None, "connection closed instead of cancelling"
            kind, payload = message
            if kind == b"E":
                assert error_fields(payload)["C"] == "57014"
                break
        read_until_ready(sock)
    finally:
        sock.close()
