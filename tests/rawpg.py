"""A minimal blocking PostgreSQL client over a raw socket, for tests that must control
every byte (malformed packets, slow readers, vanishing clients). Trust authentication only.
"""

from __future__ import annotations

import socket
import struct

from proxy import wire
from proxy.wire import (
    COPY_DONE,
    FLUSH,
    SYNC,
    TERMINATE,
    bind,
    close,
    copy_data,
    copy_fail,
    describe,
    execute,
    query,
)

__all__ = [
    "COPY_DONE",
    "COPY_FAIL",
    "FLUSH",
    "GSSENC_REQUEST",
    "SSL_REQUEST",
    "SYNC",
    "TERMINATE",
    "bind",
    "close_statement",
    "copy_data",
    "describe_statement",
    "error_fields",
    "execute",
    "handshake",
    "parse",
    "query_message",
    "read_error_then_close",
    "read_message",
    "read_until_ready",
    "recv_exactly",
    "startup_packet",
]

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


def startup_packet(user: str, database: str = "postgres", **params: str) -> bytes:
    pairs = {"user": user, "database": database, **params}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items()) + b"\0"
    return struct.pack("!II", 8 + len(body), PROTOCOL_3_0) + body


def query_message(sql: str | bytes) -> bytes:
    return query(sql.encode() if isinstance(sql, str) else sql)


COPY_FAIL = copy_fail(b"client gave up")


def parse(name: bytes, sql: str | bytes) -> bytes:
    """Parse ``sql`` (UTF-8 if a str) as statement ``name``, no parameter types given."""
    return wire.parse(name, sql.encode() if isinstance(sql, str) else sql)


def describe_statement(name: bytes) -> bytes:
    return describe(b"S", name)


def close_statement(name: bytes) -> bytes:
    return close(b"S", name)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """``count`` bytes, or fewer if the peer closed the connection first."""
    chunks, left = [], count
    while left:
        chunk = sock.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next ``(type, body)`` from the server, or ``None`` at end of stream."""
    header = recv_exactly(sock, 5)
    if len(header) < 5:
        return None
    length = struct.unpack("!I", header[1:])[0]
    body = recv_exactly(sock, length - 4)
    assert len(body) == length - 4, "connection closed inside a message"
    return header[:1], body


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body by their one-letter codes."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Messages up to and including ReadyForQuery; fails on end of stream."""
    messages = []
    while True:
        msg = read_message(sock)
        assert msg is not None, f"connection closed; got {messages}"
        messages.append(msg)
        if msg[0] == b"Z":
            return messages


def handshake(sock: socket.socket, user: str, application_name: str = "rawpg") -> None:
    """Send a StartupMessage and read up to the first ReadyForQuery (trust auth)."""
    sock.sendall(startup_packet(user, application_name=application_name))
    messages = read_until_ready(sock)
    errors = [error_fields(body) for kind, body in messages if kind == b"E"]
    assert not errors, errors
    assert (b"R", struct.pack("!I", 0)) in messages, messages


def read_error_then_close(sock: socket.socket) -> dict[str, str] | None:
    """The fields of the ErrorResponse the peer sends before closing (``None`` if it only
    closed); fails if anything else arrives."""
    fields = None
    while True:
        try:
            msg = read_message(sock)
        except ConnectionResetError:
            return fields
        if msg is None:
            return fields
        kind, body = msg
        if kind == b"E":
            fields = error_fields(body)
        else:
            assert kind in (b"N", b"S"), f"unexpected {kind!r} before close"
