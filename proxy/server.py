"""The listener, the registry of live sessions, signals and graceful shutdown.

Clients over ``max_client_conn`` (every open connection counts, whatever its phase) are
still accepted, to be told ``53300 sorry, too many clients already`` after their startup
packet as PostgreSQL does; their CancelRequests are forwarded. Refusals are logged at most
once per ``LOG_INTERVAL`` seconds, with their count.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from .config import Address, Config
from .logfmt import RateLimitedLog
from .relay import ADMIN_SHUTDOWN, ClientProtocol
from .session import Session
from .streams import Dialect
from .upstream import UpstreamTLS

log = logging.getLogger("pgdp.server")
session_log = logging.getLogger("pgdp.session")

LOG_INTERVAL = 10.0  # seconds between two lines about the same repeated event
CLOSE_GRACE = 1.0  # seconds sessions told to end get to flush before they are aborted


class ListenError(OSError):
    """The listen address could not be bound (in use, not permitted, unknown host)."""


class ProxyServer:
    """Accepts clients on ``config.listen`` and relays each one to ``upstream``.

    ``dialect`` supplies the hooks applied to Query/Parse texts (see :mod:`proxy.streams`);
    without one the proxy is a transparent relay. ``tls`` is the context clients' TLS is
    accepted with (SSLRequest answered ``S``); without one SSLRequest is answered ``N``.
    ``upstream_tls`` says how to negotiate TLS with the server (None: plain).
    """

    def __init__(
        self,
        config: Config,
        upstream: Address,
        *,
        dialect: Dialect | None = None,
        tls: ssl.SSLContext | None = None,
        upstream_tls: UpstreamTLS | None = None,
    ) -> None:
        self.config = config
        self._tls = tls
        self._upstream_tls = upstream_tls
        self.upstream = upstream
        self._dialect = dialect
        self.clients: set[ClientProtocol] = set()
        self._admitted = 0  # clients in ``clients`` not over max_client_conn
        self._refusals = RateLimitedLog(self._log_refusals, LOG_INTERVAL)
        self._server: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    # --- listening -------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Bind the listen address; return the bound addresses as ``host:port`` strings."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        try:
            if listen.unix_path:
                self._server = await loop.create_unix_server(self._new_client, listen.unix_path)
            else:
                self._server = await loop.create_server(
                    self._new_client,
                    listen.host,
                    listen.port,
                    backlog=4096,
                    reuse_address=True,
                    reuse_port=self.config.workers > 1,
                )
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        bound = []
        for sock in self._server.sockets:
            name = sock.getsockname()
            bound.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name))
        return bound

    def _new_client(self) -> ClientProtocol:
        over_limit = self._admitted >= self.config.max_client_conn
        client = ClientProtocol(
            self.config,
            self.upstream,
            self._new_session,
            self._client_closed,
            self._tls,
            self._upstream_tls,
            on_refused=self._refusals if over_limit else None,
        )
        if not over_limit:
            self._admitted += 1
        self.clients.add(client)
        self._all_closed.clear()
        return client

    def _new_session(self, client_address: str) -> Session:
        return Session(
            client_address=client_address,
            max_message_size=self.config.max_message_size,
            dialect=self._dialect,
        )

    def _log_refusals(self, count: int) -> None:
        log.warning(
            "too many clients already (max-client-conn %d): %d connection(s) refused "
            "since the last report",
            self.config.max_client_conn,
            count,
        )

    def _client_closed(self, client: ClientProtocol) -> None:
        if client in self.clients:
            self.clients.discard(client)
            if not client.over_limit:
                self._admitted -= 1
        session = client.session
        if session is not None and session.user and not client.over_limit:
            session_log.info(
                "%s closed duration=%.3fs bytes_in=%d bytes_out=%d",
                session.describe(),
                session.duration(),
                client.bytes_in,
                client.server_bytes_in,
            )
        if not self.clients:
            self._all_closed.set()

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, True)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, False)

    def request_stop(self, graceful: bool) -> None:
        """SIGTERM (graceful): stop accepting, let sessions finish. SIGINT: close all now."""
        log.info("stopping (%s)", "graceful" if graceful else "immediate")
        if self._server is not None:
            self._server.close()
        if not graceful:
            for client in list(self.clients):
                client.abort()
        self._stopped.set()

    async def serve(self) -> None:
        """Run until stopped, then drain sessions (bounded by ``shutdown_timeout``)."""
        await self._stopped.wait()
        if self.clients:
            log.info(
                "waiting up to %gs for %d sessions", self.config.shutdown_timeout, len(self.clients)
            )
            try:
                async with asyncio.timeout(self.config.shutdown_timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                await self._end_sessions()
        if self._server is not None:
            await self._server.wait_closed()

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
