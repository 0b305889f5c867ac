"""A blind byte pump: the floor for any Python asyncio+uvloop middlebox.

``python bench/pump.py --listen HOST:PORT --upstream HOST:PORT``. For each client it opens
one connection to the upstream and relays bytes both ways with ``transport.write`` in
``data_received``: no framing, no parsing, no buffering of its own. Flow control as the
proxy's relay (write buffer over 256 KiB pauses reading the other side, under 64 KiB
resumes it); either side closing closes the other once its pending writes are flushed.

``--buffered``: the same pump as ``asyncio.BufferedProtocol``s, reading into one
preallocated 256 KiB buffer per socket (``get_buffer``/``buffer_updated``). A write must
then copy what was read (the transport may keep the object until the kernel takes it, and
the buffer is reused at the next read), so this measures what the lever could buy any
relay that forwards what it read.
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


class BufferedPipe(asyncio.BufferedProtocol, Pipe):
    """:class:`Pipe` reading into a preallocated buffer."""

    SIZE = 256 * 1024

    def __init__(self, peer: Pipe | None = None) -> None:
        super().__init__(peer)
        self.buffer = bytearray(self.SIZE)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes])  # a copy: the buffer is read into again


class Client(Pipe):
    """The client's socket: what it sends before the upstream connection is open waits in
    ``early`` (uvloop ignores ``pause_reading`` in ``connection_made``)."""

    pipe: type[Pipe] = Pipe  # the server side's protocol

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
                lambda: self.pipe(self), *self.upstream
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


class BufferedClient(BufferedPipe, Client):
    """:class:`Client` reading into a preallocated buffer."""

    pipe = BufferedPipe

    def __init__(self, upstream: tuple[str, int]) -> None:
        Client.__init__(self, upstream)
        self.buffer = bytearray(self.SIZE)
        self.view = memoryview(self.buffer)


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int], buffered: bool) -> None:
    client = BufferedClient if buffered else Client
    server = await asyncio.get_running_loop().create_server(
        lambda: client(upstream), *listen, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=hostport, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", type=hostport, required=True, metavar="HOST:PORT")
    parser.add_argument("--buffered", action="store_true", help="asyncio.BufferedProtocol")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the benchmarks stop it
        uvloop.run(serve(args.listen, args.upstream, args.buffered))


if __name__ == "__main__":
    main()
