"""TCP keepalive on a session's sockets, so that a vanished client host (or server) does
not hold a connection, and so a backend, for ever: ``--tcp-keepalive`` (on by default)
and ``--tcp-keepalive-idle/-interval/-count`` (unset: the operating system's values, as
PgBouncer's ``tcp_keepidle`` family)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from .config import Config


def set_keepalive(sock: Any, config: Config) -> None:
    """Apply the keepalive settings of ``config`` to ``sock`` (a TCP socket, or the
    socket-like object a transport returns); other sockets are left alone."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if config.tcp_keepalive else 0)
        if not config.tcp_keepalive:
            return
        for option, seconds in (
            (getattr(socket, "TCP_KEEPIDLE", None), config.tcp_keepalive_idle),
            (getattr(socket, "TCP_KEEPINTVL", None), config.tcp_keepalive_interval),
            (getattr(socket, "TCP_KEEPCNT", None), config.tcp_keepalive_count),
        ):
            if option is not None and seconds is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, seconds)
