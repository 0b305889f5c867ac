"""The relay Protocols against fake transports: the login timer is cancelled at the first
ReadyForQuery and leaves the server's hot path without a wrapper; a bug met on either
side's bytes closes that connection with one log line and never escapes the callback."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct

import pytest

import proxy.startup
from proxy.config import Address, load_config
from proxy.relay import ClientProtocol, ServerProtocol
from proxy.runtime import Runtime
from proxy.session import Session
from tests.rawpg import query_message, startup_packet

# Every test runs on the interpreted and the compiled build (tests/unit/conftest.py).
pytestmark = pytest.mark.usefixtures("relay_build")

AUTH_OK = b"R" + struct.pack("!II", 8, 0)
READY = b"Z" + struct.pack("!I", 5) + b"I"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.state = "open"
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, chunks) -> None:  # type: ignore[no-untyped-def, override]
        self.written.extend(bytes(chunk) for chunk in chunks)

    def close(self) -> None:
        self.state = "closed" if self.state == "open" else self.state

    def abort(self) -> None:
        self.state = "aborted"

    def is_closing(self) -> bool:
        return self.state != "open"

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


@dataclasses.dataclass
class Relay:
    client: ClientProtocol
    client_transport: FakeTransport
    server: ServerProtocol
    server_transport: FakeTransport
    session: Session


async def relay(monkeypatch: pytest.MonkeyPatch) -> Relay:
    """A client past its startup packet, relaying to a fake server connection."""
    server_transport = FakeTransport()
    servers: list[ServerProtocol] = []

    async def connect_upstream(loop, upstream, factory, timeout, tls):  # type: ignore[no-untyped-def]
        server = factory()
        server.connection_made(server_transport)
        servers.append(server)
        return server_transport, server, False

    monkeypatch.setattr(proxy.startup, "connect_upstream", connect_upstream)

    config = load_config(["--upstream", "127.0.0.1:5432", "--max-message-size", "1048576"], {})
    client = ClientProtocol(Runtime(config, Address("127.0.0.1", 5432)), lambda c: None)
    client_transport = FakeTransport()
    client.connection_made(client_transport)
    client.data_received(startup_packet("alice"))
    for _ in range(10):
        if servers:
            break
        await asyncio.sleep(0)
    assert client.session is not None and servers
    return Relay(client, client_transport, servers[0], server_transport, client.session)


async def test_login_timer_cancelled_and_hot_path_unwrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = await relay(monkeypatch)
    timer = r.client._startup._login_timer  # type: ignore[union-attr]
    assert timer is not None and not timer.cancelled()
    r.server.data_received(AUTH_OK)
    assert not timer.cancelled()
    assert r.server._feed != r.session.backend.feed  # type: ignore[union-attr]
    r.server.data_received(READY)
    assert timer.cancelled() and r.client._startup._login_timer is None  # type: ignore[union-attr]
    assert r.server._feed == r.session.backend.feed  # type: ignore[union-attr]
    assert r.client_transport.written == [AUTH_OK, READY]


async def test_bug_on_client_bytes_closes_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await relay(monkeypatch)
    r.server.data_received(AUTH_OK + READY)

    def broken(data: bytes) -> list[bytes]:
        raise RuntimeError("boom\nforged line")

    r.client._feed = broken  # the frontend stream, as cached when the relay started
    with caplog.at_level(logging.ERROR, "pgdp.session"):
        r.client.data_received(query_message("select 1"))  # must not raise
    (record,) = caplog.records
    assert record.getMessage().endswith(
        'internal error on client data, connection closed: RuntimeError: "boom\\nforged line"'
    )
    assert "user=alice" in record.getMessage()
    assert r.client_transport.state == "closed"
    assert r.server_transport.state == "aborted"


async def test_bug_on_server_bytes_closes_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await relay(monkeypatch)

    def broken(data: bytes) -> list[bytes]:
        raise KeyError("boom")

    r.server._feed = broken  # the backend stream, as cached when the relay started
    with caplog.at_level(logging.ERROR, "pgdp.session"):
        r.server.data_received(AUTH_OK)  # must not raise
    (record,) = caplog.records
    assert "internal error on server data, connection closed: KeyError" in record.getMessage()
    assert r.client_transport.state == "closed"
    assert r.server_transport.state == "aborted"
    assert r.client_transport.written == []  # nothing said: the stream state is unknown
