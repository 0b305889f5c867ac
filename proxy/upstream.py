"""Connections to the upstream PostgreSQL server: TCP (optionally TLS) or a Unix socket."""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Address
from .wire import SSL_REQUEST_CODE

SSL_REQUEST = struct.pack("!II", 8, SSL_REQUEST_CODE)


class UpstreamError(ConnectionError):
    """The upstream server could not be reached; the message names it for the client."""


PREFER_PLAIN_SECONDS = 60.0
"""After a server refused TLS (``N``), ``prefer`` connects in plain text for this long
without asking again: the SSLRequest round trip is skipped on every other connect."""


@dataclass(slots=True)
class PreferMemo:
    """What ``prefer`` remembers of the server's last answer to an SSLRequest."""

    plain_until: float = 0.0  # time.monotonic() before which the server is known to say N


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How to negotiate TLS with the server (libpq's sslmode semantics).

    ``mode``: ``prefer`` (TLS when the server offers it), ``require``, ``verify-ca`` or
    ``verify-full`` (TLS or fail; the last two verify the certificate, ``verify-full`` also
    the host name). Unix-domain sockets never use TLS, as with libpq. ``prefer`` asks
    again at most every :data:`PREFER_PLAIN_SECONDS` after a refusal (and after every
    SIGHUP, which builds a new record): a server that turns TLS on is used with TLS from
    then on, and plain text was all ``prefer`` ever promised towards one that does not.
    """

    mode: str
    context: ssl.SSLContext
    memo: PreferMemo = field(default_factory=PreferMemo, compare=False)

    @property
    def required(self) -> bool:
        return self.mode != "prefer"


class _SSLAnswer(asyncio.Protocol):
    """Reads the server's one-byte answer to an SSLRequest."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("server closed the connection"))


async def connect_upstream(
    loop: asyncio.AbstractEventLoop,
    upstream: Address,
    protocol_factory: Callable[[], asyncio.Protocol],
    timeout: float,
    tls: UpstreamTLS | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol, bool]:
    """Open a connection to ``upstream`` within ``timeout`` seconds.

    Returns the transport, the protocol (already told ``connection_made``) and whether the
    connection is encrypted. Raises :class:`UpstreamError` naming the server.
    """
    try:
        async with asyncio.timeout(timeout):
            if upstream.unix_path:
                transport, protocol = await loop.create_unix_connection(
                    protocol_factory, upstream.unix_path
                )
                return transport, protocol, False
            if tls is None:
                transport, protocol = await loop.create_connection(
                    protocol_factory, upstream.host, upstream.port
                )
                return transport, protocol, False
            return await _connect_negotiating_tls(loop, upstream, protocol_factory, tls)
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": timeout after {timeout:g} s'
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": '
            f"certificate verify failed: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": SSL error: {exc.reason or exc}'
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": {reason}'
        ) from None


async def _connect_negotiating_tls(
    loop: asyncio.AbstractEventLoop,
    upstream: Address,
    protocol_factory: Callable[[], asyncio.Protocol],
    tls: UpstreamTLS,
) -> tuple[asyncio.Transport, asyncio.Protocol, bool]:
    if not tls.required and time.monotonic() < tls.memo.plain_until:
        transport, protocol = await loop.create_connection(
            protocol_factory, upstream.host, upstream.port
        )
        return transport, protocol, False
    transport, negotiation = await loop.create_connection(_SSLAnswer, upstream.host, upstream.port)
    try:
        transport.write(SSL_REQUEST)
        answer = await negotiation.answer  # type: ignore[attr-defined]
        if answer == b"S":
            transport = await loop.start_tls(
                transport, negotiation, tls.context, server_hostname=upstream.host
            )
            encrypted = True
        elif answer == b"N" and not tls.required:
            encrypted = False
            tls.memo.plain_until = time.monotonic() + PREFER_PLAIN_SECONDS
        elif answer == b"N":
            raise UpstreamError(
                f'upstream server "{upstream}" does not support SSL, '
                f"but upstream-sslmode is {tls.mode}"
            )
        else:
            raise UpstreamError(f'upstream server "{upstream}": unexpected answer to SSLRequest')
    except BaseException:
        transport.abort()
        raise
    protocol = protocol_factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return transport, protocol, encrypted


async def forward_cancel(upstream: Address, packet: bytes, timeout: float) -> None:
    """Send a CancelRequest packet to the server on a new connection, as libpq does.

    The server never answers a CancelRequest; it closes the connection when done.
    """
    try:
        async with asyncio.timeout(timeout):
            if upstream.unix_path:
                reader, writer = await asyncio.open_unix_connection(upstream.unix_path)
            else:
                reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            writer.write(packet)
            await writer.drain()
            await reader.read()  # wait for the server to close: the cancel was processed
            writer.close()
    except TimeoutError:
        raise UpstreamError(f'upstream server "{upstream}": cancel timed out') from None
    except OSError as exc:
        raise UpstreamError(f'upstream server "{upstream}": {exc.strerror or exc}') from None
