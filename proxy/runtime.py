"""The record every session of a worker is served with."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from .config import Address, Config
from .events import NO_EVENTS, SessionEvents
from .keepalive import KeepaliveOptions, keepalive_options
from .peers import PeerRegistry
from .streams import Dialect
from .upstream import UpstreamTLS


@dataclass(frozen=True, slots=True)
class Runtime:
    """The configuration and what was prepared from it, passed whole to the listener and
    to each client connection (a new record replaces it; open sessions keep theirs).

    ``dialect`` supplies the hooks applied to Query/Parse texts (see :mod:`proxy.streams`);
    without one the proxy is a transparent relay. ``tls`` is the context clients' TLS is
    accepted with (SSLRequest answered ``S``); without one SSLRequest is answered ``N``.
    ``upstream_tls`` says how to negotiate TLS with the server (None: plain). ``peers``
    records which backend serves which real client. ``events`` is told what happens to
    sessions, once per event (metrics). ``keepalive`` is worked out from ``config``.
    """

    config: Config
    upstream: Address
    dialect: Dialect | None = None
    tls: ssl.SSLContext | None = None
    upstream_tls: UpstreamTLS | None = None
    peers: PeerRegistry = field(default_factory=PeerRegistry)
    events: SessionEvents = NO_EVENTS
    keepalive: KeepaliveOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keepalive", keepalive_options(self.config))
