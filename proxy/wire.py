"""PostgreSQL protocol v3 framing and message codecs, without I/O.

Two framings exist on the wire:

* startup packets (client's first message, and after an SSLRequest/GSSENCRequest refusal):
  ``Int32 length`` (including itself) + ``Int32 code`` + payload;
* typed messages (everything else): ``Byte1 type`` + ``Int32 length`` (including itself,
  excluding the type byte) + body.

Only what the proxy needs is here: a startup-packet parser, the ErrorResponse/Notice field
codec, builders for the few messages the proxy itself sends, and builders for the frontend
messages of the extended and COPY protocols (what a client sends; the tests' one source of
them). The typed-message framers that run per message live in :mod:`proxy.streams` because
they carry per-session state.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

# Startup-packet request codes (the protocol-version field doubles as a request code).
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_MAJOR = 3

MAX_STARTUP_PACKET_LENGTH = 10_000
"""PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH in libpq/pqcomm.h)."""

INT32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol; the connection must be closed.

    ``sqlstate`` is what the client is told when a reply is still possible.
    """

    sqlstate = "08P01"


class AttributionLost(ProtocolViolation):
    """The server's answers no longer match the groups the client's messages were
    counted into, while rewritten statements were still to be answered: the session
    ends (their outcomes were reported as :data:`proxy.streams.ATTRIBUTION_LOST`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"replies cannot be attributed any more ({reason}) while rewritten"
            " statements are being answered"
        )


class StartupKind(Enum):
    SSL_REQUEST = "ssl"
    GSSENC_REQUEST = "gssenc"
    CANCEL_REQUEST = "cancel"
    STARTUP = "startup"


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """One complete startup packet. ``raw`` is the exact bytes received (for forwarding)."""

    kind: StartupKind
    raw: bytes

    @property
    def protocol_version(self) -> int:
        return INT32.unpack_from(self.raw, 4)[0]

    def parameters(self) -> dict[str, str]:
        """The name/value pairs of a StartupMessage, decoded as UTF-8 for display only."""
        fields = self.raw[8:].split(b"\0")
        params: dict[str, str] = {}
        for name, value in zip(fields[0::2], fields[1::2], strict=False):
            if not name:
                break
            params[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return params


class StartupParser:
    """Accumulates bytes until one startup packet is complete.

    :meth:`feed` returns ``(packet, rest)`` once a packet is complete (``rest`` being any
    bytes that followed it), or ``None`` while more bytes are needed. Raises
    :class:`ProtocolViolation` for lengths outside PostgreSQL's bounds or unknown codes.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[StartupPacket, bytes] | None:
        buffer = self._buffer + data if self._buffer else data
        if len(buffer) >= 4:
            # Judge the length as soon as it is known: a client that sent a bad one may
            # never send the four bytes more that the code needs.
            length = INT32.unpack_from(buffer, 0)[0]
            if length < 8 or length > MAX_STARTUP_PACKET_LENGTH:
                raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if len(buffer) < 8:
            self._buffer = buffer
            return None
        code = INT32.unpack_from(buffer, 4)[0]
        if len(buffer) < length:
            self._buffer = buffer
            return None
        self._buffer = b""
        raw, rest = buffer[:length], buffer[length:]
        return StartupPacket(_classify(code, length), raw), rest


def _classify(code: int, length: int) -> StartupKind:
    if code == SSL_REQUEST_CODE:
        kind = StartupKind.SSL_REQUEST
    elif code == GSSENC_REQUEST_CODE:
        kind = StartupKind.GSSENC_REQUEST
    elif code == CANCEL_REQUEST_CODE:
        # Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256. Forward any length.
        if length < 12:
            raise ProtocolViolation("invalid length of cancel request packet")
        return StartupKind.CANCEL_REQUEST
    elif code >> 16 == PROTOCOL_3_MAJOR:
        return StartupKind.STARTUP
    else:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.2"
        )
    if length != 8:
        raise ProtocolViolation("invalid length of startup packet")
    return kind


# --- ErrorResponse / NoticeResponse fields -------------------------------------------


def parse_fields(body: bytes) -> list[tuple[int, bytes]]:
    """Split an ErrorResponse/NoticeResponse body into ``(field code, value)`` pairs."""
    fields: list[tuple[int, bytes]] = []
    pos = 0
    end = len(body)
    while pos < end and body[pos] != 0:
        code = body[pos]
        stop = body.index(b"\0", pos + 1)
        fields.append((code, body[pos + 1 : stop]))
        pos = stop + 1
    return fields


def build_fields(fields: list[tuple[int, bytes]]) -> bytes:
    """Inverse of :func:`parse_fields`: the body of an ErrorResponse/NoticeResponse."""
    return b"".join(bytes((code,)) + value + b"\0" for code, value in fields) + b"\0"


def message(type_byte: bytes, body: bytes) -> bytes:
    """A complete typed message."""
    return type_byte + INT32.pack(len(body) + 4) + body


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    position: int | None = None,
) -> bytes:
    """An ErrorResponse as PostgreSQL would send it (S, V, C, M, optional D and P)."""
    fields = [
        (ord("S"), severity.encode()),
        (ord("V"), severity.encode()),
        (ord("C"), sqlstate.encode()),
        (ord("M"), text.encode()),
    ]
    if detail is not None:
        fields.append((ord("D"), detail.encode()))
    if position is not None:
        fields.append((ord("P"), str(position).encode()))
    return message(b"E", build_fields(fields))


def query(text: bytes) -> bytes:
    """A Query message (simple protocol) for ``text``, which holds no NUL."""
    return message(b"Q", text + b"\0")


def query_header(text_length: int) -> bytes:
    """The first 5 bytes of a Query whose text is ``text_length`` bytes (for writing a
    large rewritten text as pieces, without copying it into one message)."""
    return b"Q" + INT32.pack(text_length + 5)


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def command_complete(tag: bytes) -> bytes:
    return message(b"C", tag + b"\0")


# --- frontend messages of the extended and COPY protocols (what clients send) --------


def parse(name: bytes, text: bytes, param_oids: Sequence[int] = ()) -> bytes:
    """A Parse of ``text`` as statement ``name`` (neither holds a NUL), with the parameter
    type OIDs ``param_oids`` (none: the server infers every type)."""
    params = struct.pack(f"!H{len(param_oids)}I", len(param_oids), *param_oids)
    return message(b"P", name + b"\0" + text + b"\0" + params)


def bind(portal: bytes, statement: bytes) -> bytes:
    """A Bind of ``statement`` to ``portal``: no parameters, all results in text format."""
    # parameter format codes, parameter values, result format codes: none of each
    return message(b"B", portal + b"\0" + statement + b"\0" + b"\0\0" * 3)


def execute(portal: bytes = b"", max_rows: int = 0) -> bytes:
    """An Execute of ``portal`` returning at most ``max_rows`` rows (0: no limit)."""
    return message(b"E", portal + b"\0" + struct.pack("!i", max_rows))


def describe(kind: bytes, name: bytes) -> bytes:
    """A Describe of the prepared statement (``kind`` b"S") or portal (b"P") ``name``."""
    return message(b"D", kind + name + b"\0")


def close(kind: bytes, name: bytes) -> bytes:
    """A Close of the prepared statement (``kind`` b"S") or portal (b"P") ``name``."""
    return message(b"C", kind + name + b"\0")


def copy_data(data: bytes) -> bytes:
    """A CopyData carrying ``data`` as it is."""
    return message(b"d", data)


def copy_fail(reason: bytes) -> bytes:
    """A CopyFail with the error message ``reason``, which holds no NUL."""
    return message(b"f", reason + b"\0")


SYNC = message(b"S", b"")
"""Sync: ends an extended-protocol group; the server answers ReadyForQuery."""
FLUSH = message(b"H", b"")
"""Flush: asks the server to send what it has answered so far."""
TERMINATE = message(b"X", b"")
"""Terminate: the client is leaving."""
COPY_DONE = message(b"c", b"")
"""CopyDone: the end of a COPY FROM STDIN's data."""


def cstring_at(body: bytes, pos: int, end: int | None = None) -> tuple[bytes, int]:
    """The NUL-terminated string starting at ``pos`` (before ``end``) and the offset just
    past its NUL; :class:`ProtocolViolation` when there is none, as PostgreSQL's
    ``invalid string in message``."""
    stop = body.find(b"\0", pos, len(body) if end is None else end)
    if stop < 0:
        raise ProtocolViolation("invalid string in message")
    return body[pos:stop], stop + 1
