"""``--workers N``: N processes accepting on one port (SO_REUSEPORT), and their supervisor.

The parent forks the workers before any event loop exists, forwards SIGTERM/SIGINT to
them, restarts a worker that dies unexpectedly (at once, but after a growing pause when it
keeps dying soon after its start: :class:`RestartPolicy`), and returns once all have
exited. The
kernel spreads new connections over the workers; a CancelRequest may reach a different
worker than its session, which is fine: it is forwarded to the server, where the key is.

SIGHUP goes to the supervisor alone. It reads and checks the settings once, writes the
ones it accepted, numbered, to a file of its private directory (replaced atomically),
and pokes every worker through a pipe of its own, which the worker's event loop watches
(:class:`Inbox`). So a worker applies exactly what was checked (not a config file that
changed again since), a poke sent while it is still starting or busy waits in its pipe,
and however many reloads pile up it applies the latest, once. A worker whose pipe ends
(the supervisor is gone) stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

log = logging.getLogger("pgdp.workers")


class RestartPolicy:
    """How long to wait before starting a worker again that exited unexpectedly.

    A worker that ran at least ``healthy`` seconds is started again at once. One that
    died sooner (a crash at start-up, a bad certificate, a file-descriptor limit) counts
    one more quick failure in a row, and waits ``first`` seconds doubled per earlier
    quick failure, at most ``longest``: a crash loop costs the machine a fork every few
    seconds, not a core."""

    def __init__(self, first: float = 0.1, longest: float = 10.0, healthy: float = 30.0) -> None:
        self.first, self.longest, self.healthy = first, longest, healthy
        self._quick_failures: dict[int, int] = {}

    def pause(self, index: int, lived: float) -> float:
        """Seconds to wait before starting worker ``index`` again, after it ran ``lived``
        seconds."""
        if lived >= self.healthy:
            self._quick_failures.pop(index, None)
            return 0.0
        failures = self._quick_failures.get(index, 0)
        self._quick_failures[index] = failures + 1
        if failures == 0:
            return 0.0
        return min(self.longest, self.first * 2 ** (failures - 1))


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
    """A worker's end of its channel from the supervisor: a non-blocking pipe that the
    supervisor writes a byte to after each accepted reload, and the file holding the
    latest accepted settings with their number. Only the supervisor, its parent, holds
    the pipe's other end and writes the file."""

    def __init__(self, fd: int, path: str, seen: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._path = path
        self._seen = seen  # the number of the settings this worker runs with
        self.closed = False  # the supervisor is gone: nothing more will come

    def fileno(self) -> int:
        return self._fd

    def latest(self) -> object | None:
        """The settings accepted since the ones this worker runs with, or None."""
        while not self.closed:
            try:
                if not os.read(self._fd, 4096):
                    self.closed = True
            except BlockingIOError:
                break
        try:
            with open(self._path, "rb") as handle:
                number, settings = pickle.load(handle)
        except FileNotFoundError:
            return None
        if number <= self._seen:
            return None
        self._seen = number
        return settings

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def abandon(self) -> None:
        """The supervisor is gone (killed: it cleaned up nothing): remove its settings
        directory, which no process needs any more (every worker tries; one succeeds)."""
        shutil.rmtree(os.path.dirname(self._path), ignore_errors=True)


def supervise(
    count: int,
    work: Callable[[int, Inbox], None],
    on_exit: Callable[[int], None] | None = None,
    on_reload: Callable[[], object | None] | None = None,
) -> int:
    """Run ``work(index, inbox)`` in ``count`` forked processes until a signal stops them
    all; ``on_exit(pid)`` is called for each worker process that exited. On SIGHUP,
    ``on_reload()`` runs here: what it returns (None: nothing, the settings were refused)
    reaches every worker's ``inbox``, including a worker forked while it ran."""
    children: dict[int, int] = {}  # pid → worker index
    started: dict[int, float] = {}  # pid → when it was forked (monotonic)
    restarts = RestartPolicy()
    pokes: dict[int, int] = {}  # pid → the write end of its pipe
    stopping = False
    accepted = 0  # the number of the latest settings accepted
    reloading = again = False
    directory = tempfile.mkdtemp(prefix="pgdp-settings-")  # 0700: this user's alone
    path = os.path.join(directory, "settings")

    def spawn(index: int) -> None:
        forked_with = accepted
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
            for fd in pokes.values():  # its siblings' pipes
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = 1
            try:
                work(index, Inbox(read_end, path, forked_with))
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
        started[pid] = time.monotonic()
        pokes[pid] = write_end
        if accepted != forked_with:  # a reload ran while it was forked: it has the old
            poke(pid)

    def poke(pid: int) -> None:
        fd = pokes.get(pid)
        if fd is None:
            return
        # Full: it has pokes to read already. Broken: it exited (started again with the
        # new settings).
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, b"!")

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reload(signum: int, _frame: object) -> None:
        # A SIGHUP during a reload (signal handlers nest) is served after it, in order.
        nonlocal reloading, again
        if reloading:
            again = True
            return
        reloading = True
        try:
            again = True
            while again:
                again = False
                reload_once()
        finally:
            reloading = False

    def reload_once() -> None:
        nonlocal accepted
        settings = on_reload() if on_reload is not None else None
        if settings is None:
            return
        staged = path + ".new"
        try:
            with open(staged, "wb") as handle:
                pickle.dump((accepted + 1, settings), handle)
            os.replace(staged, path)
        except OSError as exc:  # never out of the signal handler
            log.error("reload not sent to the workers: %s", exc.strerror or exc)
            return
        accepted += 1
        for pid in list(children):
            poke(pid)
        log.info("configuration sent to %d worker(s)", len(children))

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    try:
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
                os.close(pokes.pop(pid))
            if on_exit is not None:
                on_exit(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                status = status or (code if code > 0 else 0)
            else:
                pause = restarts.pause(index, time.monotonic() - started.pop(pid, 0.0))
                log.warning(
                    "worker %d (pid %d) exited with %s; starting it again%s",
                    index,
                    pid,
                    code,
                    f" in {pause:.1f} s" if pause else "",
                )
                deadline = time.monotonic() + pause
                while not stopping and time.monotonic() < deadline:  # SIGTERM cuts it short
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                if not stopping:
                    spawn(index)
            started.pop(pid, None)
        return status
    finally:
        for fd in pokes.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
