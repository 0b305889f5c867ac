"""asyncio Protocols for the two sockets of a session: the thin I/O layer.

Every decision is delegated to :class:`proxy.session.Session` and the streams it holds;
this module moves bytes, applies flow control and closes things:

* Flow control: when one side's write buffer passes its high-water mark, reading the other
  side pauses, and resumes below the low mark (uvicorn's pattern; pause/resume are
  idempotent). Memory per session stays bounded by the marks plus one read.
* Closing either side closes the other after its pending writes are flushed; a client
  that vanishes, or half-closes, takes its server connection (and so its backend) with it.
* Limits: a client has ``client_login_timeout`` seconds to log in (one timer, cancelled at
  the server's first ReadyForQuery); a client over ``max_client_conn`` is refused after its
  startup packet. Where the proxy ends a connection itself, the client is told why with a
  FATAL ErrorResponse when one cannot land inside a server message or a TLS handshake.
* Nothing raised while handling received bytes escapes a protocol callback: a protocol
  violation is answered (FATAL 08P01), anything else logged; that connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from .appname import with_client_address
from .config import Address, Config
from .events import (
    LOGIN_TIMEOUT as REFUSED_LOGIN_TIMEOUT,
)
from .events import (
    NO_EVENTS,
    PROTOCOL_VIOLATION,
    UPSTREAM_UNREACHABLE,
    SessionEvents,
)
from .keepalive import set_keepalive
from .logfmt import value
from .session import ENCRYPTION_REFUSED, TLS_ACCEPTED, Phase, Session, StartupAction
from .upstream import UpstreamError, UpstreamTLS, connect_upstream, forward_cancel
from .wire import ProtocolViolation, StartupKind, StartupPacket, error_response

log = logging.getLogger("pgdp.session")

LOGIN_TIMEOUT = error_response("57014", "canceling authentication due to timeout", severity="FATAL")
TOO_MANY_CLIENTS = error_response("53300", "sorry, too many clients already", severity="FATAL")
ADMIN_SHUTDOWN = error_response(
    "57P01", "terminating connection due to administrator command", severity="FATAL"
)

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return "unix" if peer is not None or transport.get_extra_info("socket") else "-"


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


class ClientProtocol(asyncio.Protocol):
    """The client's socket. Created by the listener for each accepted connection.

    ``on_refused`` set means the client is over ``max_client_conn``: it is refused
    (53300) after its startup packet, and ``on_refused()`` is called then.
    """

    __slots__ = (
        "_config",
        "_ending",
        "_feed",
        "_handshaking",
        "_held_by_server",
        "_login_timer",
        "_lost",
        "_on_close",
        "_on_refused",
        "_rest",
        "_server",
        "_server_write",
        "_server_writelines",
        "_session_factory",
        "_tls",
        "_transport",
        "_upstream",
        "_upstream_tls",
        "bytes_in",
        "events",
        "session",
    )

    def __init__(
        self,
        config: Config,
        upstream: Address,
        session_factory: Callable[[str], Session],
        on_close: Callable[[ClientProtocol], None],
        tls: ssl.SSLContext | None = None,
        upstream_tls: UpstreamTLS | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._on_refused = on_refused
        self.events: SessionEvents = NO_EVENTS  # set by the server: metrics
        self._tls = tls
        self._upstream_tls = upstream_tls
        self._upstream = upstream
        self._session_factory = session_factory
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._server: ServerProtocol | None = None
        self._rest = b""
        self.session: Session | None = None
        self.bytes_in = 0  # bytes received from the client
        self._login_timer: asyncio.TimerHandle | None = None
        self._handshaking = False  # the TLS handshake is under way: no plaintext reply
        self._ending = False  # the proxy ends this connection and has logged why
        self._lost = False  # connection_lost has run
        self._held_by_server = False  # reading paused by flow control (server leg full)
        # Set when the relay starts: the frontend's feed and the server socket's writers.
        self._feed: Callable[[bytes], list[bytes]] | None = None
        self._server_write: Callable[[bytes], None] | None = None
        self._server_writelines: Callable[[list[bytes]], None] | None = None

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.session = self._session_factory(_peer(transport))
        # A refused client gets no TLS: no handshake work for a connection about to close.
        self.session.tls_available = self._tls is not None and self._on_refused is None
        self._login_timer = asyncio.get_running_loop().call_later(
            self._config.client_login_timeout, self._login_timed_out
        )

    def data_received(self, data: bytes) -> None:
        # Hot path: bound methods cached when the relay started, no attribute chains. The
        # try costs nothing until something raises (zero-cost exceptions, Python 3.11+).
        feed = self._feed
        try:
            if feed is not None:
                self.bytes_in += len(data)
                chunks = feed(data)
                if len(chunks) == 1:
                    self._server_write(chunks[0])
                elif chunks:
                    self._server_writelines(chunks)
                else:
                    self._yield_reading()
                return
            self._before_relay(data)
        except ProtocolViolation as exc:
            self._protocol_violation(exc)
        except Exception as exc:
            self.internal_error(exc, "client")

    def eof_received(self) -> bool:
        """The client half-closed. A PostgreSQL client never does that on purpose: it is
        gone. End the server leg now (its backend must not wait for a reader that will
        never come) and drop what is still owed to the client."""
        if self._server is None:
            return False  # nothing relayed yet: close, flushing a pending reply
        self._server.end()
        self.transport.abort()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # also called by _start_tls, and maybe by the loop after it
            return
        self._lost = True
        self._cancel_login_timer()
        session = self.session
        if session is not None and session.phase is not Phase.CLOSED:
            session.phase = Phase.CLOSED
        if session is not None:
            session.release()
        if self._server is not None:
            self._server.client_gone()
        self._on_close(self)

    def pause_writing(self) -> None:
        if self._server is not None:
            self._server.pause_reading()

    def resume_writing(self) -> None:
        if self._server is not None:
            self._server.resume_reading()

    # --- startup ---------------------------------------------------------------------

    def _before_relay(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        self.bytes_in += len(data)
        if session.phase is Phase.STARTUP:
            self._startup_data(data)
        elif session.phase is Phase.CONNECTING:
            self._rest += data

    def _startup_data(self, data: bytes) -> None:
        """Startup packets in ``data``; raises :class:`ProtocolViolation` for bad ones."""
        session = self.session
        assert session is not None and self._transport is not None
        while data or session.phase is Phase.STARTUP:
            result = session.startup.feed(data)
            if result is None:
                return
            packet, data = result
            action = session.on_startup_packet(packet)
            if action is StartupAction.REFUSE_ENCRYPTION:
                self._transport.write(ENCRYPTION_REFUSED)
                if data:  # as PostgreSQL: nothing may come before the answer was read
                    raise PlaintextAfterEncryptionRequest(packet.kind)
                continue
            if action is StartupAction.ACCEPT_TLS:
                if data:
                    raise PlaintextAfterEncryptionRequest(packet.kind)
                self._transport.write(TLS_ACCEPTED)
                # Not a byte more as plaintext: the ClientHello belongs to the handshake.
                self._transport.pause_reading()
                self._handshaking = True
                asyncio.get_running_loop().create_task(self._start_tls())
                return
            if action is StartupAction.FORWARD_CANCEL:
                self._cancel_login_timer()  # forwarding has its own timeout
                asyncio.get_running_loop().create_task(self._forward_cancel(packet))
                return
            if self._on_refused is not None:
                self._refuse()
                return
            self._rest = data
            self._transport.pause_reading()
            asyncio.get_running_loop().create_task(self._connect(packet))
            return

    def _refuse(self) -> None:
        """Over ``max_client_conn``: 53300 as PostgreSQL says it, no server connection."""
        assert self._on_refused is not None
        self._on_refused()
        self._ending = True
        self.terminate(TOO_MANY_CLIENTS, abort_server=True)

    async def _start_tls(self) -> None:
        """The server side of the TLS handshake; startup continues on the TLS transport."""
        session = self.session
        assert session is not None and self._transport is not None and self._tls is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                self._transport,
                self,
                self._tls,
                server_side=True,
                ssl_handshake_timeout=self._config.connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.events.tls_failed()
            if not self._ending:  # else the reason is logged already (login timeout)
                log.warning("%s TLS handshake failed: %s", session.describe(), value(str(exc)))
            transport = None
        finally:
            self._handshaking = False
        if transport is None or transport.is_closing():
            # Failed, or the connection was lost during the handshake (uvloop then returns
            # a closed transport): the loop reports no connection_lost for it.
            self._transport.abort()
            self.connection_lost(None)
            return
        self._transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        session.tls_active = True

    # --- login timeout ---------------------------------------------------------------

    def _login_timed_out(self) -> None:
        self._login_timer = None
        session = self.session
        assert session is not None
        transport = self._transport
        if transport is None or transport.is_closing() or session.phase is Phase.CLOSED:
            return
        if session.login_complete():
            return
        log.warning(
            "%s canceling authentication due to timeout (%gs, during %s)",
            session.describe(),
            self._config.client_login_timeout,
            self._login_stage(),
        )
        self._ending = True
        self.events.refused(REFUSED_LOGIN_TIMEOUT)
        self.terminate(LOGIN_TIMEOUT, abort_server=True)

    def _login_stage(self) -> str:
        if self._handshaking:
            return "tls handshake"
        phase = self.session.phase  # type: ignore[union-attr]
        if phase is Phase.STARTUP:
            return "startup"
        return "server connect" if phase is Phase.CONNECTING else "authentication"

    def _logged_in(self) -> None:
        """Called once, at the server's first ReadyForQuery."""
        self._cancel_login_timer()

    def _cancel_login_timer(self) -> None:
        timer = self._login_timer
        if timer is not None:
            timer.cancel()
            self._login_timer = None

    async def _forward_cancel(self, packet: StartupPacket) -> None:
        try:
            await forward_cancel(self._upstream, packet.raw, self._config.connect_timeout)
        except UpstreamError as exc:
            log.warning("%s cancel request not forwarded: %s", self.session.describe(), exc)
        finally:
            self.close()

    async def _connect(self, packet: StartupPacket) -> None:
        session = self.session
        assert session is not None and self._transport is not None
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        try:
            transport, server, encrypted = await connect_upstream(
                loop,
                self._upstream,
                lambda: ServerProtocol(self),
                self._config.connect_timeout,
                self._upstream_tls,
            )
        except UpstreamError as exc:
            self.events.upstream_failed(time.monotonic() - began)
            if self._ending:  # the client was told why already
                return
            self.events.refused(UPSTREAM_UNREACHABLE)
            log.warning("%s upstream unreachable: %s", session.describe(), exc)
            if not self._transport.is_closing():
                self._transport.write(error_response("08001", str(exc), severity="FATAL"))
                self._transport.close()
            return
        self.events.upstream_connected(time.monotonic() - began)
        set_keepalive(transport.get_extra_info("socket"), self._config)
        if self._transport.is_closing():
            transport.abort()
            return
        self._server = server  # type: ignore[assignment]
        session.phase = Phase.RELAY
        if encrypted and session.tls_active:
            # Channel binding would bind the client to *our* certificate, which the
            # server cannot check: offer the client plain SCRAM only.
            session.backend.strip_scram_plus = True  # type: ignore[union-attr]
        self._feed = session.frontend.feed  # type: ignore[union-attr]
        self._server_write = transport.write
        self._server_writelines = transport.writelines
        server.start_relay(session, self.transport, self._logged_in)
        log.info(
            "%s opened app=%s upstream=%s%s",
            session.describe(),
            value(session.application_name) if session.application_name else "-",
            self._upstream,
            " (tls)" if encrypted else "",
        )
        if self._config.application_name_add_host and ":" in session.client_address:
            transport.write(with_client_address(packet, session.client_address))
        else:
            transport.write(packet.raw)
        rest, self._rest = self._rest, b""
        if rest:
            self.data_received(rest)
            self.bytes_in -= len(rest)  # already counted during startup
        self._transport.resume_reading()

    # --- helpers used by the server side ---------------------------------------------

    @property
    def tls_handshaking(self) -> bool:
        """The client's TLS handshake is under way."""
        return self._handshaking

    @property
    def over_limit(self) -> bool:
        """This client came over ``max_client_conn`` and is (to be) refused."""
        return self._on_refused is not None

    @property
    def server_bytes_in(self) -> int:
        """Bytes received from the server for this client so far."""
        return self._server.bytes_in if self._server is not None else 0

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def pause_reading(self) -> None:
        """Flow control: the server leg's write buffer is full."""
        self._held_by_server = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._held_by_server = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _yield_reading(self) -> None:
        """A read that produced nothing to forward: a message still arriving, held and
        scanned here. libuv reads a ready socket up to 32 times in a row before it serves
        anyone else; stop after this read and come back on the next turn of the loop, so
        that one client's large message never delays the others by more than one read."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._resume_after_yield)

    def _resume_after_yield(self) -> None:
        transport = self._transport
        if not self._held_by_server and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        if self._server is not None:
            self._server.abort()

    def terminate(self, error: bytes | None, *, abort_server: bool) -> None:
        """End this connection from the proxy's side: send ``error`` (a FATAL
        ErrorResponse) if a reply is possible, close the client's connection after its
        pending writes, and abort the server leg (or close it, ``abort_server=False``).
        During a TLS handshake nothing can be said: the connection is aborted."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._handshaking:
                transport.abort()
            else:
                if error is not None and self._can_reply():
                    transport.write(error)
                transport.close()
        server = self._server
        if server is not None:
            if abort_server:
                server.abort()
            else:
                server.client_gone()

    def _can_reply(self) -> bool:
        """True where a message of ours cannot land inside a server message."""
        session = self.session
        backend = session.backend if session is not None else None
        return backend is None or self._server is None or backend.at_message_boundary()

    def _protocol_violation(self, exc: ProtocolViolation) -> None:
        session = self.session
        assert session is not None
        log.warning("%s protocol violation: %s", session.describe(), value(str(exc)))
        self._ending = True
        self.events.refused(PROTOCOL_VIOLATION)
        detail = getattr(exc, "detail", None)
        self.terminate(
            error_response(exc.sqlstate, str(exc), severity="FATAL", detail=detail),
            abort_server=True,
        )

    def internal_error(self, exc: Exception, side: str) -> None:
        """Last resort for a bug met while handling bytes from ``side`` ("client" or
        "server"): one log line, this connection closed, no traceback, no reply (what
        state the streams are in is unknown)."""
        log.error(
            "%s internal error on %s data, connection closed: %s: %s",
            self.session.describe() if self.session is not None else "-",
            side,
            type(exc).__name__,
            value(str(exc)),
        )
        self._ending = True
        self.terminate(None, abort_server=True)


class ServerProtocol(asyncio.Protocol):
    """The upstream server's socket of one session."""

    __slots__ = ("_client", "_client_write", "_client_writelines", "_feed", "bytes_in", "transport")

    def __init__(self, client: ClientProtocol) -> None:
        self._client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.bytes_in = 0  # bytes received from the server
        self._feed: Callable[[bytes], list[bytes]] | None = None
        self._client_write: Callable[[bytes], None] | None = None
        self._client_writelines: Callable[[list[bytes]], None] | None = None

    def start_relay(
        self, session: Session, client_transport: asyncio.Transport, on_login: Callable[[], None]
    ) -> None:
        """Cache the hot-path callables: the backend stream and the client's writers.

        Until the server's first ReadyForQuery each read also checks whether the login is
        complete, then calls ``on_login()`` once; from then on reads go straight to the
        backend stream.
        """
        backend_feed = session.backend.feed  # type: ignore[union-attr]
        login_complete = session.login_complete

        def feed_until_login(data: bytes) -> list[bytes]:
            chunks = backend_feed(data)
            if login_complete():
                self._feed = backend_feed
                on_login()
            return chunks

        self._feed = feed_until_login
        self._client_write = client_transport.write
        self._client_writelines = client_transport.writelines

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            chunks = self._feed(data)  # type: ignore[misc]
        except ProtocolViolation as exc:
            client = self._client
            log.error(
                "%s server protocol violation: %s",
                client.session.describe(),  # type: ignore[union-attr]
                value(str(exc)),
            )
            self.abort()
            client.abort()
            return
        except Exception as exc:
            self._client.internal_error(exc, "server")
            return
        if len(chunks) == 1:
            self._client_write(chunks[0])  # type: ignore[misc]
        elif chunks:
            self._client_writelines(chunks)  # type: ignore[misc]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Forward what the server sent (already written), then close the client.
        self._client.close()

    def pause_writing(self) -> None:
        self._client.pause_reading()

    def resume_writing(self) -> None:
        self._client.resume_reading()

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def end(self) -> None:
        """Close now: gracefully when nothing is owed to the server (a Terminate already
        written still reaches it), else abort rather than wait for the flush."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def client_gone(self) -> None:
        """The client's connection is lost: flush what it sent, then close.

        Except when reading from the server is paused and bytes are still owed to it: the
        server is then blocked writing to us and reads nothing until it can, so the flush
        would never end and the backend would live on. Break the connection instead; its
        next write fails, as it would had the client been connected to it directly.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() and not transport.is_reading():
            transport.abort()
        else:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
