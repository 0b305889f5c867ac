"""``--application-name-add-host`` (PgBouncer's convention): the StartupMessage sent to
the server carries ``application_name`` with `` - HOST:PORT`` of the client appended, so
that ``pg_stat_activity`` shows who is really connected."""

from __future__ import annotations

import struct

from .wire import StartupPacket

NAMEDATALEN = 64  # the server keeps at most 63 bytes of application_name


def with_client_address(packet: StartupPacket, client_address: str) -> bytes:
    """``packet`` (a StartupMessage) re-encoded with the client's address appended to its
    application_name (added when absent). The original name is shortened, on a UTF-8
    character boundary, so that the suffix survives the server's 63-byte limit. Other
    parameters keep their bytes and order."""
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
    return struct.pack("!I", 8 + len(new_body)) + raw[4:8] + new_body


def _shorten(value: bytes, limit: int) -> bytes:
    if len(value) <= max(limit, 0):
        return value
    cut = value[: max(limit, 0)]
    while cut and 0x80 <= cut[-1] < 0xC0:  # a UTF-8 continuation byte
        cut = cut[:-1]
    if cut and cut[-1] >= 0xC0:  # a lead byte without its continuation
        cut = cut[:-1]
    return cut
