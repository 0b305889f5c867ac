"""``--workers N``: N processes accepting on one port (SO_REUSEPORT), and their supervisor.

The parent forks the workers before any event loop exists, forwards SIGTERM/SIGINT to
them, restarts a worker that dies unexpectedly, and returns once all have exited. The
kernel spreads new connections over the workers; a CancelRequest may reach a different
worker than its session, which is fine: it is forwarded to the server, where the key is.

SIGHUP goes to the supervisor alone. It reads and checks the settings once, and sends
the ones it accepted to every worker through a pipe of its own (:class:`Inbox`), which
the worker's event loop reads: a worker applies exactly what was checked (it does not
read a file that may have changed again since), and a message sent while it is still
starting waits in its pipe until its loop reads it (a signal would be lost then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
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


class Inbox:
    """A worker's end of its pipe from the supervisor (non-blocking): the messages the
    supervisor sends it, each a length-prefixed pickle. Only the supervisor, its parent,
    holds the other end."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = b""
        self.closed = False  # the supervisor is gone: nothing more will come

    def fileno(self) -> int:
        return self._fd

    def latest(self) -> object | None:
        """The last whole message received since the previous call, or None."""
        while not self.closed:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
        latest = None
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + size:
                break
            latest = pickle.loads(self._buffer[4 : 4 + size])
            self._buffer = self._buffer[4 + size :]
        return latest

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def supervise(
    count: int,
    work: Callable[[int, Inbox], None],
    on_exit: Callable[[int], None] | None = None,
    on_reload: Callable[[], object | None] | None = None,
) -> int:
    """Run ``work(index, inbox)`` in ``count`` forked processes until a signal stops them
    all; ``on_exit(pid)`` is called for each worker process that exited. On SIGHUP,
    ``on_reload()`` runs here: what it returns (None: nothing, the settings were refused)
    is sent to every worker's ``inbox``, and to a worker forked while it ran."""
    children: dict[int, int] = {}  # pid → worker index
    outboxes: dict[int, int] = {}  # pid → the write end of its pipe
    stopping = False
    generation = 0  # reloads accepted so far
    message = b""  # the last one, as sent

    def spawn(index: int) -> None:
        forked_at = generation
        read_end, write_end = os.pipe()
        # Blocked across the fork: the child must never run the supervisor's handler.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Its settings come through its inbox; a SIGHUP sent to every process
            # (pkill -HUP) is the supervisor's to handle.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(write_end)
            for fd in outboxes.values():  # its siblings' pipes
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = 1
            try:
                work(index, Inbox(read_end))
                code = 0
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(read_end)
        children[pid] = index
        outboxes[pid] = write_end
        if generation != forked_at:  # a reload ran while it was forked: it has the old
            send(pid)

    def send(pid: int) -> None:
        fd = outboxes.get(pid)
        if fd is None or not message:
            return
        try:
            if len(message) > select.PIPE_BUF:  # not atomic: wait for room instead
                os.set_blocking(fd, True)
            os.write(fd, message)
        except BlockingIOError:
            log.warning(
                "worker %d (pid %d) has not read its earlier settings; not sent this time",
                children.get(pid, -1),
                pid,
            )
        except OSError:
            pass  # it exited: started again with the new settings
        finally:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reload(signum: int, _frame: object) -> None:
        nonlocal generation, message
        settings = on_reload() if on_reload is not None else None
        if settings is None:
            return
        payload = pickle.dumps(settings)
        message = len(payload).to_bytes(4, "big") + payload
        generation += 1
        for pid in list(children):
            send(pid)
        log.info("configuration sent to %d worker(s)", len(children))

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
        with contextlib.suppress(OSError):
            os.close(outboxes.pop(pid))
        if on_exit is not None:
            on_exit(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code > 0 else 0)
        else:
            log.warning("worker %d (pid %d) exited with %s; starting it again", index, pid, code)
            spawn(index)
    for fd in outboxes.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    return status
