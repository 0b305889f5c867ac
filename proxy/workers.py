"""``--workers N``: N processes accepting on one port (SO_REUSEPORT), and their supervisor.

The parent forks the workers before any event loop exists, forwards SIGTERM/SIGINT to
them, restarts a worker that dies unexpectedly, and returns once all have exited. The
kernel spreads new connections over the workers; a CancelRequest may reach a different
worker than its session, which is fine: it is forwarded to the server, where the key is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

log = logging.getLogger("pgdp.workers")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding ``host:port`` for the workers.

    With port 0 this picks the port all workers will share.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def supervise(
    count: int,
    work: Callable[[int], None],
    on_exit: Callable[[int], None] | None = None,
    on_reload: Callable[[], bool] | None = None,
) -> int:
    """Run ``work(index)`` in ``count`` forked processes until a signal stops them all;
    ``on_exit(pid)`` is called for each worker process that exited. SIGHUP is forwarded
    to every worker (each reloads its settings) when ``on_reload()``, run here first,
    returns True: a configuration the supervisor refused is not re-read by the workers
    (they keep theirs, and cannot read a file that changed again since in the meantime)."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            code = 1
            try:
                work(index)
                code = 0
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reload(signum: int, _frame: object) -> None:
        if on_reload is not None and not on_reload():
            return
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for index in range(count):
        spawn(index)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        if on_exit is not None:
            on_exit(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code > 0 else 0)
        else:
            log.warning("worker %d (pid %d) exited with %s; starting it again", index, pid, code)
            spawn(index)
    return status
