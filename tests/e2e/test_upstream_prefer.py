"""``--upstream-sslmode prefer`` (the default) against a server without TLS: one SSLRequest,
then plain connects without the extra round trip, as the server's answer is remembered."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import PgServer, wait_until

SSL_REQUEST = struct.pack("!II", 8, 80877103)
PROTOCOL_3 = struct.pack("!I", 3 << 16)


class RecordingTap:
    """A TCP forwarder in front of the server that records the first bytes of each
    connection (what the proxy sent first)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.first: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target, timeout=10)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        first = record
        try:
            while data := source.recv(65536):
                if first:
                    with self._lock:
                        self.first.append(data[:8])
                    first = False
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def tap(pg: PgServer) -> Iterator[RecordingTap]:
    recorder = RecordingTap(pg.host, pg.port)
    yield recorder
    recorder.close()


def test_prefer_asks_once_then_connects_plain(start_proxy, pg: PgServer, tap) -> None:
    proxy = start_proxy(upstream=f"127.0.0.1:{tap.port}")
    for _ in range(3):
        with proxy.connect() as conn:
            ssl = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            if ssl.fetchone()[0]:
                pytest.skip("this server offers TLS: prefer encrypts every connection")
    wait_until(lambda: len(tap.first) == 3, 10, "three upstream connections")
    assert tap.first[0] == SSL_REQUEST
    for first in tap.first[1:]:
        assert first[4:8] == PROTOCOL_3, first  # the StartupMessage straight away


def test_require_asks_every_time(start_proxy, pg: PgServer, tap) -> None:
    proxy = start_proxy("--upstream-sslmode", "require", upstream=f"127.0.0.1:{tap.port}")
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
            proxy.connect()
    wait_until(lambda: len(tap.first) == 2, 10, "two upstream connections")
    assert tap.first == [SSL_REQUEST, SSL_REQUEST]
