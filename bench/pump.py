"""A blind byte pump: the floor for any Python asyncio+uvloop middlebox.

``python bench/pump.py --listen HOST:PORT --upstream HOST:PORT``. For each client it opens
one connection to the upstream and relays bytes both ways with ``transport.write`` in
``data_received``: no framing, no parsing, no buffering of its own. Flow control as the
proxy's relay (write buffer over 256 KiB pauses reading the other side, under 64 KiB
resumes it); either side closing closes the other once its pending writes are flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvloop

HIGH_WATER, LOW_WATER = 256 * 1024, 64 * 1024


class Pipe(asyncio.Protocol):
    """One socket; ``peer`` is the Pipe of the other socket of the pair."""

    def __init__(self, peer: Pipe | None = None) -> None:
        self.peer, self.transport = peer, None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Client(Pipe):
    """The client's socket: what it sends before the upstream connection is open waits in
    ``early`` (uvloop ignores ``pause_reading`` in ``connection_made``)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream, self.early = upstream, bytearray()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early += data
            self.transport.pause_reading()
        else:
            self.peer.transport.write(data)

    async def connect(self) -> None:
        try:
            _, peer = await asyncio.get_running_loop().create_connection(
                lambda: Pipe(self), *self.upstream
            )
        except OSError:
            self.transport.close()
            return
        self.peer = peer
        if self.transport.is_closing():  # the client left while we connected
            peer.transport.close()
            return
        if self.early:
            peer.transport.write(bytes(self.early))
        self.transport.resume_reading()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(upstream), *listen, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=hostport, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", type=hostport, required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the benchmarks stop it
        uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
