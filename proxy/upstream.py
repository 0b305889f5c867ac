"""Connections to the upstream PostgreSQL server (TCP or Unix-domain socket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .config import Address


class UpstreamError(ConnectionError):
    """The upstream server could not be reached; the message names it for the client."""


async def connect_upstream(
    loop: asyncio.AbstractEventLoop,
    upstream: Address,
    protocol_factory: Callable[[], asyncio.Protocol],
    timeout: float,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Open a connection to ``upstream`` within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            if upstream.unix_path:
                return await loop.create_unix_connection(protocol_factory, upstream.unix_path)
            return await loop.create_connection(protocol_factory, upstream.host, upstream.port)
    except TimeoutError:
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": timeout after {timeout:g} s'
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UpstreamError(
            f'could not connect to upstream server "{upstream}": {reason}'
        ) from None


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
