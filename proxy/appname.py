"""``--application-name-add-host`` (PgBouncer's convention): the StartupMessage sent to
the server carries ``application_name`` with `` - HOST:PORT`` of the client appended, so
that ``pg_stat_activity`` shows who is really connected."""

from __future__ import annotations

import struct

from .wire import StartupPacket

NAMEDATALEN = 64  # pg_stat_activity keeps at most 63 bytes of application_name
MAX_STARTUP_PACKET = 10_000  # the server's bound on a StartupMessage (pqcomm.h)


def with_client_address(packet: StartupPacket, client_address: str) -> bytes:
    """``packet`` (a StartupMessage) re-encoded with the client's address appended to its
    application_name (added when absent). The original name is shortened, on a UTF-8
    character boundary, so that the suffix survives the server's 63-byte limit however
    the server cleans the name (see :func:`_server_length`). Other parameters keep their
    bytes and order. A packet that would grow past the server's 10,000-byte bound goes
    unchanged."""
    raw = packet.raw
    items = raw[8:].split(b"\0")
    pairs: list[tuple[bytes, bytes]] = []
    for key, value in zip(items[0::2], items[1::2], strict=False):
        if not key:
            break
        pairs.append((key, value))
    suffix = f" - {client_address}".encode()
    out: list[tuple[bytes, bytes]] = []
    found = False
    for key, value in pairs:
        if key == b"application_name":
            value = _shorten(value, NAMEDATALEN - 1 - len(suffix)) + suffix
            found = True
        out.append((key, value))
    if not found:
        out.append((b"application_name", suffix[3:]))
    new_body = b"".join(key + b"\0" + value + b"\0" for key, value in out) + b"\0"
    if 8 + len(new_body) > MAX_STARTUP_PACKET:
        return raw
    return struct.pack("!I", 8 + len(new_body)) + raw[4:8] + new_body


def _server_length(byte: int) -> int:
    """How many bytes of ``pg_stat_activity.application_name`` one byte of the name
    takes: printable ASCII stays as is; any other byte becomes ``?`` (PostgreSQL up to
    15) or ``\\xNN`` (16 and later), so count 4 to be right on both."""
    return 1 if 0x20 <= byte <= 0x7E else 4


def _shorten(value: bytes, limit: int) -> bytes:
    """The longest prefix of ``value`` that takes at most ``limit`` bytes once the server
    cleaned it, cut before a UTF-8 character that does not fit whole."""
    limit = max(limit, 0)
    used = 0
    end = 0
    for index, byte in enumerate(value):
        used += _server_length(byte)
        if used > limit:
            break
        end = index + 1
    else:
        return value
    cut = value[:end]
    # Cut before the lead byte of a character whose continuation bytes did not fit.
    back = len(cut)
    while back and 0x80 <= cut[back - 1] < 0xC0:
        back -= 1
    if back and cut[back - 1] >= 0xC0:
        lead = cut[back - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if len(cut) - (back - 1) < need:
            cut = cut[: back - 1]
    return cut
