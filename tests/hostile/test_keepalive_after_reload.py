"""Keepalive settings worked out once per configuration (``Runtime.keepalive``): a SIGHUP
that changes them must reach the sessions accepted afterwards, on both legs, while the
sessions already open keep theirs; a Unix-socket listener takes none and still serves."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from proxy.config import load_config
from proxy.keepalive import keepalive_options
from proxy.runtime import Runtime
from tests.conftest import REPO, PgServer, wait_until

_SYS_PIDFD_GETFD = 438  # x86_64 and arm64 alike


def _toml(path: Path, **values: object) -> None:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))


def _process_socket(pid: int, fd: int) -> socket.socket:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            pytest.skip(f"pidfd_getfd not permitted here: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=dup)


def _legs(pid: int, session: tuple, pg: PgServer) -> dict[str, socket.socket]:
    """The proxy's TCP sockets of ``session`` (see :func:`_session`): the client leg is
    connected to the client's address, the server leg to ``pg`` from the address the
    session's backend reports."""
    legs: dict[str, socket.socket] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:"):
            continue
        sock = _process_socket(pid, int(name))
        try:
            peer = sock.getpeername()[:2] if sock.family == socket.AF_INET else None
            local = sock.getsockname()[:2] if sock.family == socket.AF_INET else None
        except OSError:
            peer = local = None
        if peer is not None and peer == session[:2]:
            legs["client"] = sock
        elif peer == (pg.host, pg.port) and local == session[2:]:
            legs["server"] = sock
        else:
            sock.close()
    return legs


def _session(conn: psycopg.Connection) -> tuple:
    """(client host, client port, proxy's server-leg host, port): the last two as the
    backend sees them; the first two None for a client over a Unix socket."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        host, port = sock.getsockname()[:2] if sock.family == socket.AF_INET else (None, None)
    row = conn.execute(
        "select host(inet_client_addr()), inet_client_port() "
        "from pg_stat_activity where pid = pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return (host, port, row[0], row[1])


def _options(sock: socket.socket) -> tuple[int, ...]:
    on = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    if not on:
        return (0,)
    return (
        on,
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


def _observed(pid: int, conn: psycopg.Connection, pg: PgServer) -> dict[str, tuple[int, ...]]:
    key = _session(conn)
    legs = _legs(pid, key, pg)
    assert set(legs) == {"client", "server"}, legs
    try:
        return {name: _options(sock) for name, sock in legs.items()}
    finally:
        for sock in legs.values():
            sock.close()


def test_sighup_keepalive_changes_reach_new_sessions_only(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    if pg.host.startswith("/"):
        pytest.skip("the server is reached over a Unix socket")
    config = tmp_path / "proxy.toml"
    _toml(
        config,
        log_level="info",
        tcp_keepalive_idle=17,
        tcp_keepalive_interval=5,
        tcp_keepalive_count=3,
    )
    proxy = start_proxy("--config", str(config))
    pid = proxy.process.pid
    with proxy.connect() as old:
        assert _observed(pid, old, pg) == {"client": (1, 17, 5, 3), "server": (1, 17, 5, 3)}

        _toml(
            config,
            log_level="info",
            tcp_keepalive_idle=41,
            tcp_keepalive_interval=9,
            tcp_keepalive_count=4,
        )
        os.kill(pid, 1)
        wait_until(lambda: proxy.log().count("configuration reloaded") == 1, 10, "reload 1")
        with proxy.connect() as new:
            assert _observed(pid, new, pg) == {"client": (1, 41, 9, 4), "server": (1, 41, 9, 4)}
        assert _observed(pid, old, pg) == {"client": (1, 17, 5, 3), "server": (1, 17, 5, 3)}

        _toml(config, log_level="info", tcp_keepalive="off")
        os.kill(pid, 1)
        wait_until(lambda: proxy.log().count("configuration reloaded") == 2, 10, "reload 2")
        with proxy.connect() as off:
            assert _observed(pid, off, pg) == {"client": (0,), "server": (0,)}
        assert old.execute("select 1").fetchone() == (1,)


def test_unix_listener_serves_and_keeps_the_server_leg_alive(
    pg: PgServer, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A Unix-socket listener: its connections take no TCP options (and must not fail
    trying); the TCP server leg of such a session still gets them."""
    if pg.host.startswith("/"):
        pytest.skip("the server is reached over a Unix socket")
    directory = tmp_path_factory.mktemp("sock")  # short: socket paths are limited
    logfile = tmp_path / "proxy.log"
    args = ["--listen", str(directory), "--upstream", f"{pg.host}:{pg.port}"]
    with open(logfile, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args, "--tcp-keepalive-idle", "23"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    try:
        wait_until(lambda: "listening on" in logfile.read_text(), 30, "the proxy to listen")
        dsn = f"host={directory} port=6432 user={pg.user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            legs = _legs(process.pid, _session(conn), pg)
            try:
                assert set(legs) == {"server"}
                assert _options(legs["server"])[:2] == (1, 23)
            finally:
                for sock in legs.values():
                    sock.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert "Traceback" not in logfile.read_text()


def test_runtime_replace_recomputes_keepalive() -> None:
    on = load_config(["--tcp-keepalive-idle", "17"], {})
    off = load_config(["--tcp-keepalive", "off"], {})
    runtime = Runtime(on, on.upstream)
    assert runtime.keepalive == keepalive_options(on)
    replaced = dataclasses.replace(runtime, config=off)
    assert (
        replaced.keepalive
        == keepalive_options(off)
        == ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),)
    )
    assert dataclasses.replace(replaced, config=on).keepalive == runtime.keepalive
    with pytest.raises((ValueError, TypeError)):
        dataclasses.replace(runtime, keepalive=())  # type: ignore[call-arg]
