"""Abuse of ``--metrics-listen`` from whoever can reach it: it must never take from the
proxy's clients what they need (file descriptors, the relay's thread).

Idle connections to the metrics port used to be held for ever, each with a thread and a
descriptor: under the descriptor limit they starved the PostgreSQL listener (EMFILE, new
clients refused), and the metrics thread then spun on its own failing accept(). Broken
requests (header line too long, peer reset) printed multi-line tracebacks into the log.
"""

from __future__ import annotations

import functools
import resource
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest

from tests.conftest import PgServer
from tests.ops.conftest import http_get, metrics_address

SOFT, HARD = 40, 64  # the proxy needs about 20 descriptors of its own


@pytest.fixture
def idle_sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_idle_metrics_connections_do_not_starve_clients(
    start_proxy, pg: PgServer, monkeypatch: pytest.MonkeyPatch, idle_sockets: ExitStack
) -> None:  # type: ignore[no-untyped-def]
    limit = functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (SOFT, HARD))
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=limit))
        proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    host, port = metrics_address(proxy).rsplit(":", 1)
    for _ in range(2 * HARD):  # slowloris: connect, send nothing, keep the socket
        try:
            idle_sockets.enter_context(socket.create_connection((host, int(port)), timeout=3))
        except OSError:
            break  # the metrics listener stopped accepting: out of descriptors
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("select 'served'").fetchone() == ("served",)
    idle_sockets.close()


def test_garbage_and_huge_requests_get_answers(start_proxy, pg: PgServer) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy("--metrics-listen", "127.0.0.1:0")
    address = metrics_address(proxy)
    host, port = address.rsplit(":", 1)
    for request in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /" + b"m" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            answer = sock.recv(100)  # an error page (HTTP/0.9 for garbage), never 200
            assert b"Error" in answer or answer.split()[1][:1] in (b"4", b"5"), answer
    assert http_get(address, "/healthz") == (200, "ok\n")
    with proxy.connect(autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # socketserver used to print a multi-line traceback per broken request into the log
    assert "Traceback" not in proxy.log()
    assert "Exception occurred" not in proxy.log()
