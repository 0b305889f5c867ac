"""Which server backend serves which real client: backend pid → client address.

``pg_stat_activity`` shows the proxy's address for every session that came through it. The
proxy learns each session's backend pid from BackendKeyData and records it here once the
session is logged in, so the audit record and ``EXPLAIN CLEAN CONNECTION`` can name the
real client (``host:port``) of the sessions they list.

With ``--workers N`` each worker is a process of its own; the registry is then a directory
that all of them share, one empty file per session whose name says it all
(``<backend pid> <worker pid> <client address>``), created at login and removed at close:
a snapshot of every worker's sessions is one ``scandir``. The supervisor removes the
entries of a worker that died (:func:`forget_worker`). Per session, never per message: a
login costs one file creation in that mode, nothing otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


class PeerRegistry:
    """Backend pid → real client address, for this process or shared by its workers.

    ``directory`` None keeps the registry in this process only.
    """

    __slots__ = ("_directory", "_local")

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._local: dict[int, str] = {}

    @property
    def directory(self) -> Path | None:
        return self._directory

    def add(self, backend_pid: int, client_address: str) -> None:
        """Session ``backend_pid`` serves ``client_address`` (logged in just now)."""
        if backend_pid <= 0:
            return
        self._local[backend_pid] = client_address
        if self._directory is not None:
            with contextlib.suppress(OSError):  # the registry is informative, never fatal
                os.close(os.open(self._path(backend_pid, client_address), _CREATE, 0o600))

    def remove(self, backend_pid: int) -> None:
        """The session of ``backend_pid`` is closed."""
        address = self._local.pop(backend_pid, None)
        if address is None or self._directory is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._path(backend_pid, address))

    def lookup(self, backend_pids: Iterable[int]) -> dict[int, str]:
        """The client addresses of those of ``backend_pids`` that came through the proxy."""
        wanted = set(backend_pids)
        everyone = self.snapshot() if self._directory is not None else self._local
        return {pid: address for pid, address in everyone.items() if pid in wanted}

    def snapshot(self) -> dict[int, str]:
        """Every session through the proxy (all workers) now: backend pid → address."""
        if self._directory is None:
            return dict(self._local)
        found: dict[int, str] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._directory):
                parsed = _parse(entry.name)
                if parsed is not None:
                    found[parsed[0]] = parsed[2]
        found.update(self._local)
        return found

    def _path(self, backend_pid: int, address: str) -> str:
        assert self._directory is not None
        return os.path.join(self._directory, f"{backend_pid} {os.getpid()} {_safe(address)}")


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _safe(address: str) -> str:
    """An address as one file name component (a Unix socket path may hold ``/``)."""
    return address.replace("/", "%2F").replace("\0", "")[:200]


def _parse(name: str) -> tuple[int, int, str] | None:
    """(backend pid, worker pid, address) from an entry's name; None for anything else."""
    backend, _, rest = name.partition(" ")
    worker, _, address = rest.partition(" ")
    if not (backend.isdigit() and worker.isdigit() and address):
        return None
    return int(backend), int(worker), address.replace("%2F", "/")


def forget_worker(directory: Path, worker_pid: int) -> None:
    """Remove the entries written by ``worker_pid`` (it exited: its sessions are gone)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            parsed = _parse(entry.name)
            if parsed is not None and parsed[1] == worker_pid:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
