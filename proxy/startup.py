"""A client connection from accept to relay: startup packets, TLS, cancel, connect, login.

:class:`ClientStartup` runs the steps before bytes can be relayed, for one
:class:`~proxy.relay.ClientProtocol`, deciding with :meth:`Session.on_startup_packet`:
encryption requests are answered (``S`` and a TLS handshake, or ``N``), a CancelRequest is
forwarded on a connection of its own, a StartupMessage opens the upstream connection and
starts the relay. One timer gives the client ``client_login_timeout`` seconds to reach the
server's first ReadyForQuery; the relay reports that moment (:meth:`logged_in`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from .appname import with_client_address
from .events import LOGIN_TIMEOUT as REFUSED_LOGIN_TIMEOUT
from .events import UPSTREAM_UNREACHABLE
from .keepalive import apply_keepalive
from .logfmt import value
from .runtime import Runtime
from .session import ENCRYPTION_REFUSED, TLS_ACCEPTED, Phase, Session, StartupAction
from .upstream import UpstreamError, connect_upstream, forward_cancel
from .wire import ProtocolViolation, StartupKind, StartupPacket, error_response

log = logging.getLogger("pgdp.session")

LOGIN_TIMEOUT = error_response("57014", "canceling authentication due to timeout", severity="FATAL")
TOO_MANY_CLIENTS = error_response("53300", "sorry, too many clients already", severity="FATAL")


class PlaintextAfterEncryptionRequest(ProtocolViolation):
    """Bytes that came with an SSLRequest/GSSENCRequest, so before its answer: sent in
    clear whatever the answer, they may come from a man in the middle (CVE-2021-23214)."""

    detail = (
        "This could be either a client-software bug or evidence of an attempted "
        "man-in-the-middle attack."
    )

    def __init__(self, request: StartupKind) -> None:
        what = "SSL request" if request is StartupKind.SSL_REQUEST else "GSSAPI encryption request"
        super().__init__(f"received unencrypted data after {what}")


class Client(Protocol):
    """What the startup needs of its client connection (:class:`proxy.relay.ClientProtocol`)."""

    session: Session
    ending: bool  # the proxy ends the connection and has logged why

    @property
    def transport(self) -> asyncio.Transport: ...

    def is_closed(self) -> bool: ...

    def close(self) -> None: ...

    def end(self, error: bytes) -> None:
        """Tell the client ``error`` where possible and close both legs."""

    def connection_lost(self, exc: Exception | None) -> None: ...

    def encrypted(self, transport: asyncio.Transport) -> None:
        """The TLS handshake succeeded: read on from ``transport``."""

    def server_leg(self) -> Any:
        """A new asyncio Protocol for the upstream connection."""

    def start_relay(
        self, server: Any, server_transport: asyncio.Transport, encrypted: bool
    ) -> None:
        """The upstream connection is open: relay from now on."""

    def relay_startup_rest(self, rest: bytes) -> None:
        """Relay what came after the StartupMessage, and read on."""


class ClientStartup:
    """The startup of one client connection (see the module docstring).

    ``on_refused`` set means the client is over ``max_client_conn``: it is refused (53300)
    after its startup packet, and ``on_refused()`` is called then.
    """

    __slots__ = ("_client", "_login_timer", "_on_refused", "_rest", "_runtime", "handshaking")

    def __init__(
        self,
        client: Client,
        runtime: Runtime,
        on_refused: Callable[[], None] | None,
    ) -> None:
        self._client = client
        self._runtime = runtime
        self._on_refused = on_refused
        self._rest = b""  # bytes that came after the StartupMessage, before the relay
        self.handshaking = False  # the TLS handshake is under way: no plaintext reply
        self._login_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            runtime.config.client_login_timeout, self._login_timed_out
        )

    def data(self, data: bytes) -> None:
        """Bytes from the client before the relay; raises :class:`ProtocolViolation`."""
        session = self._client.session
        if session.phase is Phase.STARTUP:
            self._startup_data(data)
        elif session.phase is Phase.CONNECTING:
            self._rest += data

    def logged_in(self) -> None:
        """Called once, at the server's first ReadyForQuery."""
        self.cancel_login_timer()
        session = self._client.session
        self._runtime.peers.add(session.backend_pid, session.client_address)

    def closed(self) -> None:
        """The client connection is lost."""
        self.cancel_login_timer()
        session = self._client.session
        if session.login_complete():
            self._runtime.peers.remove(session.backend_pid)

    def cancel_login_timer(self) -> None:
        timer = self._login_timer
        if timer is not None:
            timer.cancel()
            self._login_timer = None

    # --- startup packets ---------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        client = self._client
        session = client.session
        transport = client.transport
        while data or session.phase is Phase.STARTUP:
            result = session.startup.feed(data)
            if result is None:
                return
            packet, data = result
            action = session.on_startup_packet(packet)
            if action is StartupAction.REFUSE_ENCRYPTION:
                transport.write(ENCRYPTION_REFUSED)
                if data:  # as PostgreSQL: nothing may come before the answer was read
                    raise PlaintextAfterEncryptionRequest(packet.kind)
                continue
            if action is StartupAction.ACCEPT_TLS:
                if data:
                    raise PlaintextAfterEncryptionRequest(packet.kind)
                transport.write(TLS_ACCEPTED)
                # Not a byte more as plaintext: the ClientHello belongs to the handshake.
                transport.pause_reading()
                self.handshaking = True
                asyncio.get_running_loop().create_task(self._start_tls())
                return
            if action is StartupAction.FORWARD_CANCEL:
                self.cancel_login_timer()  # forwarding has its own timeout
                asyncio.get_running_loop().create_task(self._forward_cancel(packet))
                return
            if self._on_refused is not None:
                self._refuse()
                return
            self._rest = data
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self._connect(packet))
            return

    def _refuse(self) -> None:
        """Over ``max_client_conn``: 53300 as PostgreSQL says it, no server connection."""
        assert self._on_refused is not None
        self._on_refused()
        self._client.end(TOO_MANY_CLIENTS)

    async def _start_tls(self) -> None:
        """The server side of the TLS handshake; startup continues on the TLS transport."""
        client = self._client
        session = client.session
        plain = client.transport
        assert self._runtime.tls is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                plain,
                client,
                self._runtime.tls,
                server_side=True,
                ssl_handshake_timeout=self._runtime.config.connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._runtime.events.tls_failed()
            if not client.ending:  # else the reason is logged already (login timeout)
                log.warning("%s TLS handshake failed: %s", session.describe(), value(str(exc)))
            transport = None
        finally:
            self.handshaking = False
        if transport is None or transport.is_closing():
            # Failed, or the connection was lost during the handshake (uvloop then returns
            # a closed transport): the loop reports no connection_lost for it.
            plain.abort()
            client.connection_lost(None)
            return
        client.encrypted(transport)

    # --- login timeout -----------------------------------------------------------------

    def _login_timed_out(self) -> None:
        self._login_timer = None
        client = self._client
        session = client.session
        if client.is_closed() or session.phase is Phase.CLOSED or session.login_complete():
            return
        log.warning(
            "%s canceling authentication due to timeout (%gs, during %s)",
            session.describe(),
            self._runtime.config.client_login_timeout,
            self._login_stage(),
        )
        self._runtime.events.refused(REFUSED_LOGIN_TIMEOUT)
        client.end(LOGIN_TIMEOUT)

    def _login_stage(self) -> str:
        if self.handshaking:
            return "tls handshake"
        phase = self._client.session.phase
        if phase is Phase.STARTUP:
            return "startup"
        return "server connect" if phase is Phase.CONNECTING else "authentication"

    # --- cancel and connect ------------------------------------------------------------

    async def _forward_cancel(self, packet: StartupPacket) -> None:
        runtime = self._runtime
        try:
            await forward_cancel(runtime.upstream, packet.raw, runtime.config.connect_timeout)
        except UpstreamError as exc:
            log.warning("%s cancel request not forwarded: %s", self._client.session.describe(), exc)
        finally:
            self._client.close()

    async def _connect(self, packet: StartupPacket) -> None:
        client = self._client
        session = client.session
        runtime = self._runtime
        began = time.monotonic()
        try:
            transport, server, encrypted = await connect_upstream(
                asyncio.get_running_loop(),
                runtime.upstream,
                client.server_leg,
                runtime.config.connect_timeout,
                runtime.upstream_tls,
            )
        except UpstreamError as exc:
            runtime.events.upstream_failed(time.monotonic() - began)
            if client.ending:  # the client was told why already
                return
            runtime.events.refused(UPSTREAM_UNREACHABLE)
            log.warning("%s upstream unreachable: %s", session.describe(), exc)
            client.end(error_response("08001", str(exc), severity="FATAL"))
            return
        runtime.events.upstream_connected(time.monotonic() - began)
        if not runtime.upstream.unix_path:  # TCP: keepalive on the server leg too
            apply_keepalive(transport.get_extra_info("socket"), runtime.keepalive)
        if client.is_closed():
            transport.abort()
            return
        client.start_relay(server, transport, encrypted)
        if log.isEnabledFor(logging.INFO):  # describe() is not free: only when it is said
            log.info(
                "%s opened app=%s upstream=%s%s",
                session.describe(),
                value(session.application_name) if session.application_name else "-",
                runtime.upstream,
                " (tls)" if encrypted else "",
            )
        if runtime.config.application_name_add_host and ":" in session.client_address:
            transport.write(with_client_address(packet, session.client_address))
        else:
            transport.write(packet.raw)
        rest, self._rest = self._rest, b""
        client.relay_startup_rest(rest)
