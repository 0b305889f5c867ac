"""Multi-chunk writes during teardown: the relay writes several chunks (a read that ends a
long streamed message and starts the next, a rewrite) through the other leg's transport
looked up at the time of the write. A leg that closes while the other one is mid-stream
must end the session quietly: no "internal error" line, no traceback, the proxy serving on.

* A client streaming COPY data at full speed whose backend is terminated.
* A server streaming a large result to a client that resets its connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess
from tests.rawpg import handshake, query_message, read_message


def _quiet(proxy: ProxyProcess, before: str) -> None:
    added = proxy.log()[len(before) :]
    assert "internal error" not in added, added
    assert "Traceback" not in added, added
    with proxy.connect() as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)


def test_backend_terminated_while_client_streams_copy(
    proxy: ProxyProcess, admin: psycopg.Connection
) -> None:
    before = proxy.log()
    line = (b"x" * 8191 + b"\n") * 8  # 64 KiB per write: messages end mid-read
    with proxy.connect(application_name="teardown-copy") as conn:
        conn.execute("create temp table t (a text)")
        pid = conn.info.backend_pid
        killed = threading.Event()

        def terminate() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = admin.execute(
                    "select query from pg_stat_activity where pid = %s", (pid,)
                ).fetchone()
                if row and row[0].startswith("copy"):
                    admin.execute("select pg_terminate_backend(%s)", (pid,))
                    killed.set()
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=terminate)
        killer.start()
        try:
            with (
                pytest.raises(psycopg.Error),
                conn.cursor() as cur,
                cur.copy("copy t from stdin") as copy,
            ):
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    copy.write(line)
        finally:
            killer.join(15)
        assert killed.is_set()
    _quiet(proxy, before)


def test_client_resets_while_server_streams_a_large_result(
    proxy: ProxyProcess, pg: PgServer
) -> None:
    before = proxy.log()
    for _ in range(5):
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            handshake(sock, pg.user, application_name="teardown-reset")
            sock.sendall(query_message("select repeat('y', 300000) from generate_series(1, 200)"))
            while (message := read_message(sock)) is not None and message[0] != b"D":
                pass  # up to the first row: the server is streaming the rest
            assert message is not None
            # Reset, with the server still writing: no FIN, an RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _quiet(proxy, before)
