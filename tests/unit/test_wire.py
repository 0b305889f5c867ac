"""Startup-packet framing and message codecs, fed bytes without sockets (h11's test_io pattern).

Every packet must come out identical however the input is split: whole, byte by byte, in
random pieces, and with the bytes that follow it returned as ``rest``.
"""

from __future__ import annotations

import random
import struct

import pytest

from proxy.wire import (
    CANCEL_REQUEST_CODE,
    COPY_DONE,
    FLUSH,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    SSL_REQUEST_CODE,
    SYNC,
    TERMINATE,
    ProtocolViolation,
    StartupKind,
    StartupPacket,
    StartupParser,
    bind,
    build_fields,
    close,
    command_complete,
    copy_data,
    copy_fail,
    cstring_at,
    describe,
    error_response,
    execute,
    message,
    parse,
    parse_fields,
    ready_for_query,
)


def startup_message(params: dict[bytes, bytes], version: int = 3 << 16) -> bytes:
    body = b"".join(k + b"\0" + v + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!II", 8 + len(body), version) + body


def request(code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(payload), code) + payload


STARTUP = startup_message(
    {b"user": b"alice", b"database": b"db", b"application_name": b"\xc3\xa9t\xc3\xa9"}
)
SSL = request(SSL_REQUEST_CODE)
GSSENC = request(GSSENC_REQUEST_CODE)
CANCEL_30 = request(CANCEL_REQUEST_CODE, struct.pack("!II", 1234, 5678))
CANCEL_32 = request(CANCEL_REQUEST_CODE, struct.pack("!I", 1234) + bytes(range(32)))

PACKETS = {
    "startup": (STARTUP, StartupKind.STARTUP),
    "startup-3.2": (startup_message({b"user": b"u"}, (3 << 16) | 2), StartupKind.STARTUP),
    "ssl": (SSL, StartupKind.SSL_REQUEST),
    "gssenc": (GSSENC, StartupKind.GSSENC_REQUEST),
    "cancel-3.0": (CANCEL_30, StartupKind.CANCEL_REQUEST),
    "cancel-3.2": (CANCEL_32, StartupKind.CANCEL_REQUEST),
}


def feed_all(parser: StartupParser, pieces: list[bytes]) -> list[StartupPacket | bytes]:
    """Feed pieces; after each complete packet, keep feeding its ``rest``. Return packets
    and, last, the unconsumed bytes of the final packet's rest."""
    out: list[StartupPacket | bytes] = []
    for piece in pieces:
        data = piece
        while True:
            result = parser.feed(data)
            if result is None:
                break
            packet, data = result
            out.append(packet)
            if not data:
                break
    return out


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 9)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


@pytest.mark.parametrize("name", sorted(PACKETS))
@pytest.mark.parametrize("mode", ["whole", "bytewise", "random"])
def test_startup_packet_any_split(name: str, mode: str) -> None:
    raw, kind = PACKETS[name]
    if mode == "whole":
        pieces = [raw]
    elif mode == "bytewise":
        pieces = [raw[i : i + 1] for i in range(len(raw))]
    else:
        pieces = splits(raw, seed=len(raw))
    packets = feed_all(StartupParser(), pieces)
    assert len(packets) == 1
    packet = packets[0]
    assert isinstance(packet, StartupPacket)
    assert packet.kind is kind
    assert packet.raw == raw


def test_startup_returns_trailing_bytes() -> None:
    trailing = b"Q\0\0\0\x0dselect 1\0"
    result = StartupParser().feed(STARTUP + trailing)
    assert result is not None
    packet, rest = result
    assert packet.raw == STARTUP
    assert rest == trailing


@pytest.mark.parametrize("seed", range(20))
def test_ssl_then_startup_sequence_random_splits(seed: int) -> None:
    stream = SSL + GSSENC + STARTUP
    packets = feed_all(StartupParser(), splits(stream, seed))
    assert [p.kind for p in packets] == [  # type: ignore[union-attr]
        StartupKind.SSL_REQUEST,
        StartupKind.GSSENC_REQUEST,
        StartupKind.STARTUP,
    ]
    assert b"".join(p.raw for p in packets) == stream  # type: ignore[union-attr]


def test_startup_parameters() -> None:
    packet = StartupParser().feed(STARTUP)[0]  # type: ignore[index]
    assert packet.protocol_version == 3 << 16
    assert packet.parameters() == {
        "user": "alice",
        "database": "db",
        "application_name": "été",
    }


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("!II", 0, 3 << 16),
        struct.pack("!II", 4, 3 << 16),
        struct.pack("!II", 7, 3 << 16),
        struct.pack("!II", MAX_STARTUP_PACKET_LENGTH + 1, 3 << 16),
        struct.pack("!II", 0xFFFFFFFF, 3 << 16),
    ],
    ids=["0", "4", "7", "max+1", "2^32-1"],
)
def test_startup_bad_length(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="length"):
        StartupParser().feed(raw)


def test_startup_bad_length_detected_from_first_four_bytes() -> None:
    """A short length is refused as soon as it is known, not after more bytes arrive."""
    parser = StartupParser()
    with pytest.raises(ProtocolViolation):
        for byte in struct.pack("!I", 4):
            parser.feed(bytes((byte,)))


@pytest.mark.parametrize(
    "code",
    [2 << 16, 1 << 16, 4 << 16, 0, 1234, 80877105, 0xFFFFFFFF],
    ids=["2.0", "1.0", "4.0", "0", "1234", "unknown-request", "max"],
)
def test_startup_unknown_protocol(code: int) -> None:
    with pytest.raises(ProtocolViolation):
        StartupParser().feed(struct.pack("!II", 8, code) + b"\0" * 0)


@pytest.mark.parametrize(
    "raw",
    [
        request(SSL_REQUEST_CODE, b"xxxx"),
        request(GSSENC_REQUEST_CODE, b"x"),
        request(CANCEL_REQUEST_CODE),
        request(CANCEL_REQUEST_CODE, b"abc"),
    ],
    ids=["ssl-long", "gssenc-long", "cancel-empty", "cancel-short"],
)
def test_request_bad_length(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="length"):
        StartupParser().feed(raw)


# --- message codecs ------------------------------------------------------------------


def test_error_response_roundtrip() -> None:
    raw = error_response("08P01", "bad things", detail="more", position=7)
    assert raw[:1] == b"E"
    assert struct.unpack("!I", raw[1:5])[0] == len(raw) - 1
    fields = dict(parse_fields(raw[5:]))
    assert fields == {
        ord("S"): b"ERROR",
        ord("V"): b"ERROR",
        ord("C"): b"08P01",
        ord("M"): b"bad things",
        ord("D"): b"more",
        ord("P"): b"7",
    }
    assert build_fields(parse_fields(raw[5:])) == raw[5:]


def test_small_builders() -> None:
    assert ready_for_query() == b"Z\0\0\0\x05I"
    assert ready_for_query(b"T") == b"Z\0\0\0\x05T"
    assert command_complete(b"SELECT 1") == b"C\0\0\0\x0dSELECT 1\0"
    assert message(b"S", b"") == b"S\0\0\0\x04"
    assert cstring_at(b"ab\0cd\0", 0) == (b"ab", 3)
    assert cstring_at(b"ab\0cd\0", 3) == (b"cd", 6)


# --- frontend messages: the bytes are written out by hand from the protocol's message
# formats (Byte1 type, Int32 length counting itself, body), not computed with the builders.


def test_frontend_messages_without_body() -> None:
    assert SYNC == b"S\x00\x00\x00\x04"
    assert FLUSH == b"H\x00\x00\x00\x04"
    assert TERMINATE == b"X\x00\x00\x00\x04"
    assert COPY_DONE == b"c\x00\x00\x00\x04"


def test_parse() -> None:
    # name, text, Int16 count of parameter types (none)
    assert parse(b"", b"select 1") == b"P\x00\x00\x00\x10" + b"\x00" + b"select 1\x00" + b"\x00\x00"
    # one parameter type: int4 (OID 23)
    assert parse(b"s1", b"select $1", [23]) == (
        b"P\x00\x00\x00\x17" + b"s1\x00" + b"select $1\x00" + b"\x00\x01" + b"\x00\x00\x00\x17"
    )
    # two: text (25) and int4 (23), in order
    assert parse(b"st", b"x", (25, 23)) == (
        b"P\x00\x00\x00\x13"
        + b"st\x00"
        + b"x\x00"
        + b"\x00\x02"
        + b"\x00\x00\x00\x19"
        + b"\x00\x00\x00\x17"
    )


def test_bind() -> None:
    # portal, statement, then Int16 0 parameter format codes, Int16 0 parameters and
    # Int16 0 result format codes (all results in text)
    assert bind(b"", b"") == b"B\x00\x00\x00\x0c" + b"\x00\x00" + b"\x00\x00" * 3
    assert bind(b"cp", b"c") == (
        b"B\x00\x00\x00\x0f" + b"cp\x00" + b"c\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
    )


def test_execute() -> None:
    # portal, Int32 maximum number of rows (0: no limit)
    assert execute() == b"E\x00\x00\x00\x09" + b"\x00" + b"\x00\x00\x00\x00"
    assert execute(b"p") == b"E\x00\x00\x00\x0a" + b"p\x00" + b"\x00\x00\x00\x00"
    assert execute(b"cur", 1) == b"E\x00\x00\x00\x0c" + b"cur\x00" + b"\x00\x00\x00\x01"
    assert execute(b"", 0x01020304) == b"E\x00\x00\x00\x09" + b"\x00" + b"\x01\x02\x03\x04"


def test_describe_and_close() -> None:
    # Byte1 'S' (prepared statement) or 'P' (portal), then the name
    assert describe(b"S", b"st") == b"D\x00\x00\x00\x08" + b"Sst\x00"
    assert describe(b"P", b"") == b"D\x00\x00\x00\x06" + b"P\x00"
    assert close(b"S", b"st") == b"C\x00\x00\x00\x08" + b"Sst\x00"
    assert close(b"P", b"p") == b"C\x00\x00\x00\x07" + b"Pp\x00"


def test_copy_data_and_copy_fail() -> None:
    # CopyData: the data as it is; CopyFail: the error message as a String
    assert copy_data(b"1\n") == b"d\x00\x00\x00\x06" + b"1\n"
    assert copy_data(b"") == b"d\x00\x00\x00\x04"
    assert copy_fail(b"no") == b"f\x00\x00\x00\x07" + b"no\x00"
    assert copy_fail(b"client gave up") == b"f\x00\x00\x00\x13" + b"client gave up\x00"
