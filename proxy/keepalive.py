"""TCP keepalive on a session's sockets, so that a vanished client host (or server) does
not hold a connection, and so a backend, for ever: ``--tcp-keepalive`` (on by default)
and ``--tcp-keepalive-idle/-interval/-count`` (unset: the operating system's values, as
PgBouncer's ``tcp_keepidle`` family)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from .config import Config

TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

KeepaliveOptions = tuple[tuple[int, int, int], ...]
"""``(level, option, value)`` for each ``setsockopt`` call, in order."""


def keepalive_options(config: Config) -> KeepaliveOptions:
    """The ``setsockopt`` calls that apply the keepalive settings of ``config``: worked
    out once per configuration, not per connection."""
    if not config.tcp_keepalive:
        return ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, seconds in (
        ("TCP_KEEPIDLE", config.tcp_keepalive_idle),
        ("TCP_KEEPINTVL", config.tcp_keepalive_interval),
        ("TCP_KEEPCNT", config.tcp_keepalive_count),
    ):
        option = getattr(socket, name, None)
        if option is not None and seconds is not None:
            options.append((socket.IPPROTO_TCP, option, seconds))
    return tuple(options)


def apply_keepalive(sock: Any, options: KeepaliveOptions) -> None:
    """Make the ``setsockopt`` calls ``options`` on ``sock``, a TCP socket (or the
    socket-like object a transport returns; None for a transport already closed); a
    failure leaves the socket as it is."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        for level, option, setting in options:
            sock.setsockopt(level, option, setting)
