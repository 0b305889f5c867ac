"""The listener, the registry of live sessions, signals and graceful shutdown.

The proxy accepts connections itself (:class:`Acceptor`) rather than through
``loop.create_server``: when accept() fails for lack of file descriptors, uvloop's listener
(libuv) silently accepts and closes the waiting connections, its "EMFILE trick", or, when
that fails too, closes the listener for good, and nothing is logged. Here the failure is
logged (rate-limited), accepting pauses for ``ACCEPT_RETRY_DELAY`` and resumes by itself;
connected clients are served all along and waiting ones stay in the backlog.

Clients over ``max_client_conn`` (every open connection counts, whatever its phase) are
still accepted, to be told ``53300 sorry, too many clients already`` after their startup
packet as PostgreSQL does; their CancelRequests are forwarded. Refusals are logged at most
once per ``LOG_INTERVAL`` seconds, with their count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from . import hotpath
from .config import Address
from .events import LIMIT
from .keepalive import TCP_FAMILIES, apply_keepalive
from .logfmt import RateLimitedLog
from .relay import ADMIN_SHUTDOWN, ClientProtocol
from .runtime import Runtime

log = logging.getLogger("pgdp.server")
session_log = logging.getLogger("pgdp.session")

LOG_INTERVAL = 10.0  # seconds between two lines about the same repeated event
CLOSE_GRACE = 1.0  # seconds sessions told to end get to flush before they are aborted
BACKLOG = 4096
ACCEPT_BATCH = 128  # accepts per wakeup: a busy listener cannot starve the sessions
ACCEPT_RETRY_DELAY = 0.1  # seconds accepting pauses after accept() failed


class ListenError(OSError):
    """The listen address could not be bound (in use, not permitted, unknown host)."""


class Acceptor:
    """Accepts connections on one non-blocking listening socket (``loop.add_reader``) and
    hands each to ``adopt``. When accept() fails (EMFILE, ENFILE, ENOBUFS…) it calls
    ``on_error`` and stops watching the socket for ``ACCEPT_RETRY_DELAY`` seconds."""

    def __init__(
        self,
        sock: socket.socket,
        adopt: Callable[[socket.socket, bool], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._tcp = sock.family in TCP_FAMILIES  # its connections take keepalive settings
        self._loop = asyncio.get_running_loop()
        self._adopt = adopt
        self._on_error = on_error
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._loop.add_reader(self._fd, self._accept)

    def close(self, *, drain: bool = False) -> None:
        """Stop accepting and close the listening socket. ``drain``: first take every
        connection already waiting in the backlog (closing would reset them), in the same
        turn of the loop as the close: with SO_REUSEPORT, another process sharing the port
        then gets all new connections and none is lost (online restart)."""
        if self._closed:
            return
        self._closed = True
        if drain:
            with contextlib.suppress(OSError):
                while True:
                    try:
                        conn, _ = self._sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionAbortedError:
                        continue
                    self._adopt(conn, self._tcp)
        if self._retry is not None:
            self._retry.cancel()  # the reader is off already
        else:
            self._loop.remove_reader(self._fd)
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset while in the backlog
            except OSError as exc:
                self._on_error(exc)
                self._loop.remove_reader(self._fd)
                self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            self._adopt(conn, self._tcp)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._fd, self._accept)


async def bind_listeners(listen: Address, *, reuse_port: bool) -> list[socket.socket]:
    """Listening, non-blocking sockets for ``listen``: one per address its host resolves
    to, or the Unix-domain socket (a stale socket file is replaced, as asyncio does)."""
    if listen.unix_path:
        return [_unix_listener(listen.unix_path)]
    infos = await asyncio.get_running_loop().getaddrinfo(
        listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _unix_listener(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


class ProxyServer:
    """Accepts clients on ``runtime.config.listen`` and relays each one to
    ``runtime.upstream`` (see :class:`~proxy.runtime.Runtime`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.clients: set[ClientProtocol] = set()
        # The relay's build in use: compiled where it was built (see proxy.hotpath).
        self._client_protocol: type[ClientProtocol] = hotpath.build("relay")[0].ClientProtocol
        self._admitted = 0  # clients in ``clients`` not over max_client_conn
        self._on_client_closed = self._client_closed  # one bound method for every client
        self._refusals = RateLimitedLog(self._log_refusals, LOG_INTERVAL)
        self._acceptors: list[Acceptor] = []
        self._adopting: set[asyncio.Task[None]] = set()  # accepted, not yet connected
        self._accept_error: OSError | None = None
        self._accept_errors = RateLimitedLog(self._log_accept_errors, LOG_INTERVAL)
        self._stopped = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self.metrics: Any = None  # a proxy.metrics.Metrics, when metrics are served

    # --- listening -------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Bind the listen address and start accepting; return the bound addresses as
        ``host:port`` strings (or socket paths)."""
        listen = self.runtime.config.listen
        try:
            config = self.runtime.config
            sockets = await bind_listeners(
                listen, reuse_port=config.workers > 1 or config.reuse_port
            )
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self._acceptors = [Acceptor(sock, self._adopt, self._accept_failed) for sock in sockets]
        bound = [_address(sock) for sock in sockets]
        for acceptor in self._acceptors:
            acceptor.start()
        if self.metrics is not None:
            self.metrics.set_accepting(True)
        return bound

    def _adopt(self, conn: socket.socket, tcp: bool) -> None:
        conn.setblocking(False)
        if tcp:
            apply_keepalive(conn, self.runtime.keepalive)
        if self.metrics is not None:
            self.metrics.accepted()
        task = asyncio.get_running_loop().create_task(self._connect_accepted(conn))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _connect_accepted(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._new_client, conn)
        except OSError:  # lost before the loop took it over
            conn.close()

    def _accept_failed(self, exc: OSError) -> None:
        self._accept_error = exc
        self._accept_errors()

    def _log_accept_errors(self, count: int) -> None:
        exc = self._accept_error
        assert exc is not None
        log.error(
            "accept failed: %s (%s), %d time(s) since the last report; retrying every %gs, "
            "connected clients are still served",
            exc.strerror or exc,
            errno.errorcode.get(exc.errno or 0, "?"),
            count,
            ACCEPT_RETRY_DELAY,
        )

    def _new_client(self) -> ClientProtocol:
        over_limit = self._admitted >= self.runtime.config.max_client_conn
        client = self._client_protocol(
            self.runtime, self._on_client_closed, self._refused if over_limit else None
        )
        if not over_limit:
            self._admitted += 1
        self.clients.add(client)
        self._all_closed.clear()
        return client

    def _refused(self) -> None:
        self.runtime.events.refused(LIMIT)
        self._refusals()

    def _log_refusals(self, count: int) -> None:
        log.warning(
            "too many clients already (max-client-conn %d): %d connection(s) refused "
            "since the last report",
            self.runtime.config.max_client_conn,
            count,
        )

    def _client_closed(self, client: ClientProtocol) -> None:
        if client in self.clients:
            self.clients.discard(client)
            if not client.over_limit:
                self._admitted -= 1
        session = client.session
        if self.metrics is not None and session is not None:
            state = session.state
            self.metrics.session_closed(
                client.bytes_in,
                client.server_bytes_in,
                state.groups_sent if state is not None else 0,
                state.answering_group + 1 if state is not None else 0,
            )
        if (
            session is not None
            and session.user
            and not client.over_limit
            and session_log.isEnabledFor(logging.INFO)
        ):
            session_log.info(
                "%s closed duration=%.3fs bytes_in=%d bytes_out=%d",
                session.describe(),
                session.duration(),
                client.bytes_in,
                client.server_bytes_in,
            )
        if not self.clients:
            self._all_closed.set()

    def reconfigure(self, runtime: Runtime) -> None:
        """The record for the clients accepted from now on (SIGHUP): open sessions keep
        the one they started with (configuration, TLS context)."""
        self.runtime = runtime

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, True)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, False)

    def request_stop(self, graceful: bool) -> None:
        """SIGTERM (graceful): stop accepting, let sessions finish. SIGINT: close all now."""
        log.info("stopping (%s)", "graceful" if graceful else "immediate")
        for acceptor in self._acceptors:
            acceptor.close(drain=graceful)
        if self.metrics is not None:
            self.metrics.set_accepting(False)
        if not graceful:
            for client in list(self.clients):
                client.abort()
        self._stopped.set()

    async def serve(self) -> None:
        """Run until stopped, then drain sessions (bounded by ``shutdown_timeout``)."""
        await self._stopped.wait()
        if self.clients:
            log.info(
                "waiting up to %gs for %d sessions",
                self.runtime.config.shutdown_timeout,
                len(self.clients),
            )
            try:
                async with asyncio.timeout(self.runtime.config.shutdown_timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                await self._end_sessions()

    async def _end_sessions(self) -> None:
        """After ``shutdown_timeout``: tell every session still open, as PostgreSQL does
        (57P01), close it and its server leg; abort what has not closed within CLOSE_GRACE."""
        log.warning("closing %d sessions still open", len(self.clients))
        for client in list(self.clients):
            client.terminate(ADMIN_SHUTDOWN, abort_server=False)
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self._all_closed.wait()
        except TimeoutError:
            for client in list(self.clients):
                client.abort()
