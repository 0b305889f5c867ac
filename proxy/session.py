"""Per-client session state and the startup-phase decisions, without I/O.

A session moves STARTUP → CONNECTING → RELAY → CLOSED (or STARTUP → CLOSED), and only
its own methods move it (:meth:`Session._enter` checks every transition). In STARTUP the client may send an
SSLRequest (accepted with ``S`` and a TLS handshake when the proxy has a certificate,
else refused with ``N``) and GSSENCRequests (refused), then either a CancelRequest (forwarded to the server on a fresh connection,
the client connection closed) or a StartupMessage (the upstream connection is opened and the
packet forwarded verbatim). From then on the two :mod:`proxy.streams` carry the traffic;
authentication is the server's business and passes through untouched.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum, auto

from . import hotpath
from .logfmt import value
from .streams import BackendStream, Dialect, Fields, FrontendStream, ReplyShaping, SessionState
from .wire import ProtocolViolation, StartupKind, StartupPacket, StartupParser

_connection_ids = itertools.count(1)


class Phase(Enum):
    STARTUP = auto()  # reading startup packets (and the TLS handshake)
    CONNECTING = auto()  # StartupMessage received: the upstream connection is being opened
    RELAY = auto()  # bytes flow both ways through the streams
    CLOSED = auto()  # the client connection is closed, or was a CancelRequest


_NEXT = {
    Phase.STARTUP: frozenset({Phase.CONNECTING, Phase.CLOSED}),
    Phase.CONNECTING: frozenset({Phase.RELAY, Phase.CLOSED}),
    Phase.RELAY: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
}


class StartupAction(Enum):
    """What the I/O layer must do with a complete startup packet."""

    REFUSE_ENCRYPTION = auto()  # answer b"N" and keep reading startup packets
    ACCEPT_TLS = auto()  # answer b"S", run the TLS handshake, keep reading startup packets
    FORWARD_CANCEL = auto()  # send the packet to the server on a new connection, then close
    CONNECT = auto()  # open the upstream connection and forward the packet


ENCRYPTION_REFUSED = b"N"
TLS_ACCEPTED = b"S"


@dataclass(slots=True)
class Session:
    """State of one client connection. The I/O layer owns the sockets."""

    client_address: str
    max_message_size: int
    dialect: Dialect | None = None
    connection_id: int = field(default_factory=lambda: next(_connection_ids))
    phase: Phase = Phase.STARTUP
    tls_available: bool = False  # the proxy has a certificate for clients
    tls_active: bool = False  # this client's connection is encrypted
    user: str = ""
    database: str = ""
    application_name: str = ""
    started: float = field(default_factory=time.monotonic)
    startup: StartupParser = field(default_factory=StartupParser)
    state: SessionState | None = None
    frontend: FrontendStream | None = None
    backend: BackendStream | None = None

    def on_startup_packet(self, packet: StartupPacket) -> StartupAction:
        """Decide what a complete startup packet means; prepare the streams for CONNECT."""
        if packet.kind is StartupKind.SSL_REQUEST:
            if self.tls_active:
                raise ProtocolViolation("SSLRequest on an encrypted connection")
            return (
                StartupAction.ACCEPT_TLS if self.tls_available else StartupAction.REFUSE_ENCRYPTION
            )
        if packet.kind is StartupKind.GSSENC_REQUEST:
            return StartupAction.REFUSE_ENCRYPTION
        if packet.kind is StartupKind.CANCEL_REQUEST:
            self._enter(Phase.CLOSED)
            return StartupAction.FORWARD_CANCEL
        params = packet.parameters()
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        self.application_name = params.get("application_name", "")
        # The streams of the build in use (compiled or interpreted, see proxy.hotpath).
        self.state = hotpath.SessionState()
        self.frontend = hotpath.FrontendStream(
            self.state, max_message_size=self.max_message_size, dialect=self.dialect
        )
        self.backend = hotpath.BackendStream(
            self.state, self._outcome if self.dialect is not None else None
        )
        self._enter(Phase.CONNECTING)
        return StartupAction.CONNECT

    def relay_started(self) -> None:
        """The upstream connection is open and the StartupMessage forwarded."""
        self._enter(Phase.RELAY)

    def _enter(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise AssertionError(f"session phase {self.phase.name} -> {phase.name}")
        self.phase = phase

    def login_complete(self) -> bool:
        """True once the server's first ReadyForQuery has passed: the client is
        authenticated and its session is ready."""
        return self.state is not None and self.state.ready

    @property
    def backend_pid(self) -> int:
        """The server process serving this session (0 until BackendKeyData)."""
        return self.state.backend_pid if self.state is not None else 0

    def close(self, *, keep_backend: bool = False) -> None:
        """The client connection is closed: drop what the streams still buffer (but the
        backend stream's, ``keep_backend``, while the server's answers are still read)."""
        self._enter(Phase.CLOSED)
        if self.frontend is not None:
            self.frontend.release()
        if self.backend is not None and not keep_backend:
            self.backend.release()

    def _outcome(self, execution: ReplyShaping, error: Fields | None) -> None:
        assert self.dialect is not None
        self.dialect.outcome(self, execution, error)

    def duration(self) -> float:
        return time.monotonic() - self.started

    def describe(self) -> str:
        """``key=value`` fields for log lines (never credentials). The client's own text
        is escaped (:func:`proxy.logfmt.value`): it cannot add fields or lines."""
        return (
            f"conn={self.connection_id} client={value(self.client_address)} "
            f"user={value(self.user) if self.user else '-'} "
            f"db={value(self.database) if self.database else '-'}"
            + (" tls=on" if self.tls_active else "")
        )
