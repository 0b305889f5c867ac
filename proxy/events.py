"""What the I/O layer reports about sessions, for metrics: one call per event of a
session (never per message or per read). :data:`NO_EVENTS` ignores everything."""

from __future__ import annotations

from typing import Protocol

# Why the proxy refused or ended a client connection itself (metric label values).
LIMIT = "limit"
LOGIN_TIMEOUT = "login_timeout"
PROTOCOL_VIOLATION = "protocol_violation"
UPSTREAM_UNREACHABLE = "upstream_unreachable"


class SessionEvents(Protocol):
    def refused(self, reason: str) -> None:
        """A client connection refused or ended by the proxy, for ``reason``."""

    def upstream_connected(self, seconds: float) -> None:
        """A server connection opened in ``seconds`` (TLS negotiation included)."""

    def upstream_failed(self, seconds: float) -> None:
        """A server connection could not be opened."""

    def tls_failed(self) -> None:
        """A client's TLS handshake failed."""


class _NoEvents:
    def refused(self, reason: str) -> None:
        pass

    def upstream_connected(self, seconds: float) -> None:
        pass

    def upstream_failed(self, seconds: float) -> None:
        pass

    def tls_failed(self) -> None:
        pass


NO_EVENTS: SessionEvents = _NoEvents()
