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
from collections.abc import Callable

from .events import PROTOCOL_VIOLATION
from .logfmt import value
from .runtime import Runtime
from .session import Session
from .startup import ClientStartup
from .wire import AttributionLost, ProtocolViolation, error_response

log = logging.getLogger("pgdp.session")

ADMIN_SHUTDOWN = error_response(
    "57P01", "terminating connection due to administrator command", severity="FATAL"
)

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unix" if peer is not None or transport.get_extra_info("socket") else "-"


class ClientProtocol(asyncio.Protocol):
    """The client's socket: the relay's hot path, flow control and closing.

    Until the relay starts, received bytes go to the connection's :class:`ClientStartup`.
    ``on_refused`` set means the client is over ``max_client_conn`` (refused after its
    startup packet, see :mod:`proxy.startup`).
    """

    __slots__ = (
        "_feed",
        "_held_by_server",
        "_lost",
        "_on_close",
        "_on_refused",
        "_runtime",
        "_server",
        "_server_write",
        "_startup",
        "_transport",
        "bytes_in",
        "ending",
        "over_limit",
        "session",
    )

    def __init__(
        self,
        runtime: Runtime,
        on_close: Callable[[ClientProtocol], None],
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._on_close = on_close
        self._on_refused = on_refused
        self.over_limit = on_refused is not None  # refused after its startup packet
        self._transport: asyncio.Transport | None = None
        self._server: ServerProtocol | None = None
        self._startup: ClientStartup | None = None
        self.session: Session = None  # type: ignore[assignment]  # set by connection_made
        self.bytes_in = 0  # bytes received from the client
        self.ending = False  # the proxy ends this connection and has logged why
        self._lost = False  # connection_lost has run
        self._held_by_server = False  # reading paused by flow control (server leg full)
        # Set when the relay starts: the frontend's feed and the server socket's writers.
        self._feed: Callable[[bytes], list[bytes]] | None = None
        self._server_write: Callable[[bytes], None] | None = None

    # --- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        runtime = self._runtime
        self.session = Session(
            client_address=_peer(transport),
            max_message_size=runtime.config.max_message_size,
            dialect=runtime.dialect,
            # A refused client gets no TLS: no handshake work for a connection about to close.
            tls_available=runtime.tls is not None and not self.over_limit,
        )
        self._startup = ClientStartup(self, runtime, self._on_refused)

    def data_received(self, data: bytes) -> None:
        # Hot path: bound methods cached when the relay started, no attribute chains
        # (but writelines: several chunks come only from a rewrite or a read that ends a
        # long streamed message, and an idle session should not pay 64 bytes a method). The
        # try costs nothing until something raises (zero-cost exceptions, Python 3.11+).
        feed = self._feed
        try:
            self.bytes_in += len(data)
            if feed is not None:
                chunks = feed(data)
                if len(chunks) == 1:
                    self._server_write(chunks[0])
                elif chunks:
                    self._server.transport.writelines(chunks)  # type: ignore[union-attr]
                else:
                    self._yield_reading()
                return
            self._startup.data(data)  # type: ignore[union-attr]
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
        if self._lost:  # also called after a failed TLS handshake, and maybe by the loop
            return
        self._lost = True
        session = self.session
        if self._startup is not None:
            self._startup.closed()
        server = self._server
        if server is not None:
            server.client_gone()
        if session is not None:
            # A server leg still reading answers for their outcomes keeps the backend stream.
            session.close(keep_backend=server is not None and server.draining)
        self._on_close(self)

    def pause_writing(self) -> None:
        if self._server is not None:
            self._server.pause_reading()

    def resume_writing(self) -> None:
        if self._server is not None:
            self._server.resume_reading()

    # --- called by the startup ---------------------------------------------------------

    def encrypted(self, transport: asyncio.Transport) -> None:
        """The TLS handshake succeeded: go on reading startup packets on ``transport``."""
        self._transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.session.tls_active = True

    def server_leg(self) -> ServerProtocol:
        """A protocol for this client's upstream connection."""
        return ServerProtocol(self)

    def start_relay(
        self, server: ServerProtocol, server_transport: asyncio.Transport, encrypted: bool
    ) -> None:
        """The upstream connection is open: from now on bytes are relayed both ways."""
        session = self.session
        self._server = server
        session.relay_started()
        if encrypted and session.tls_active:
            # Channel binding would bind the client to *our* certificate, which the
            # server cannot check: offer the client plain SCRAM only.
            session.backend.strip_scram_plus = True  # type: ignore[union-attr]
        self._feed = session.frontend.feed  # type: ignore[union-attr]
        self._server_write = server_transport.write
        server.start_relay(session, self.transport, self._startup.logged_in)  # type: ignore[union-attr]

    def relay_startup_rest(self, rest: bytes) -> None:
        """Relay what the client sent after its StartupMessage, then read on."""
        if rest:
            self.bytes_in -= len(rest)  # counted when it arrived
            self.data_received(rest)
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def is_closed(self) -> bool:
        """The client connection is closed or closing."""
        return self._transport is None or self._transport.is_closing()

    def end(self, error: bytes) -> None:
        """The proxy ends this connection, having logged why: tell the client ``error``
        (a FATAL ErrorResponse) where possible, abort the server leg."""
        self.ending = True
        self.terminate(error, abort_server=True)

    # --- helpers used by the server side ---------------------------------------------

    @property
    def tls_handshaking(self) -> bool:
        """The client's TLS handshake is under way."""
        return self._startup is not None and self._startup.handshaking

    @property
    def runtime(self) -> Runtime:
        """The settings this connection is served with."""
        return self._runtime

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
            if self._startup is not None and self._startup.handshaking:
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
        self._runtime.events.refused(PROTOCOL_VIOLATION)
        detail = getattr(exc, "detail", None)
        self.end(error_response(exc.sqlstate, str(exc), severity="FATAL", detail=detail))

    def attribution_lost(self, exc: ProtocolViolation) -> None:
        """The server's answers can no longer be attributed while rewritten statements
        of this session await theirs (see :class:`proxy.streams.AttributionLost`): end
        the session as for a protocol violation of the client's."""
        self._protocol_violation(exc)

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
        self.ending = True
        self.terminate(None, abort_server=True)


class ServerProtocol(asyncio.Protocol):
    """The upstream server's socket of one session."""

    __slots__ = (
        "_client",
        "_client_write",
        "_drain_timer",
        "_feed",
        "bytes_in",
        "transport",
    )

    def __init__(self, client: ClientProtocol) -> None:
        self._client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.bytes_in = 0  # bytes received from the server
        self._feed: Callable[[bytes], list[bytes]] | None = None
        self._client_write: Callable[[bytes], None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            chunks = self._feed(data)  # type: ignore[misc]
        except AttributionLost as exc:  # the session's fault, not the server's
            self._client.attribution_lost(exc)
            return
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
            self._client.transport.writelines(chunks)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Forward what the server sent (already written), then close the client.
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        session = self._client.session
        if session is not None and session.backend is not None:
            session.backend.abandon()  # rewritten statements it never answered: audited
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
        if transport is None or transport.is_closing() or self._drain_outcomes():
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
        if transport is None or transport.is_closing() or self._drain_outcomes():
            return
        if transport.get_write_buffer_size() and not transport.is_reading():
            transport.abort()
        else:
            transport.close()

    @property
    def draining(self) -> bool:
        """The client is gone; the server's answers are read for their outcomes alone."""
        return self._drain_timer is not None

    def _drain_outcomes(self) -> bool:
        """The client left while a rewritten statement it sent is still owed an answer (a
        CLEAN's terminations happen whether or not anyone reads it): send the server a Sync
        and a Terminate in the client's place, and read its answers, for their outcomes
        alone (the audit record), until it closes; at most the longest such a statement
        may run. With a message half-sent, nothing is drained. True if draining."""
        session = self._client.session
        state = session.state if session is not None else None
        frontend = session.frontend if session is not None else None
        if (
            self._drain_timer is not None
            or self._feed is None
            or state is None
            or not state.ready
            or frontend is None
            or not frontend.awaits_shaped_answer()
        ):
            return self._drain_timer is not None
        goodbye = frontend.client_gone()
        if goodbye is None:  # a message half-sent: the server waits for its rest, not us
            return False
        self.transport.write(goodbye)
        backend_feed = session.backend.feed  # type: ignore[union-attr]

        def drain(data: bytes) -> list[bytes]:
            backend_feed(data)
            return []

        self._feed = drain
        config = self._client.runtime.config
        limit = config.clean_check_timeout + config.clean_wait_timeout + config.connect_timeout
        self._drain_timer = asyncio.get_running_loop().call_later(limit, self.abort)
        self.transport.resume_reading()  # no client to hold the server back any more
        log.info(
            "%s client gone: reading the server's answer to its rewritten statement",
            session.describe(),
        )
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
