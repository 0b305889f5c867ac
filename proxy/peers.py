"""Which server backend serves which real client: backend pid → client address.

``pg_stat_activity`` shows the proxy's address for every session that came through it. The
proxy learns each session's backend pid from BackendKeyData and records it here once the
session is logged in, so the audit record and ``EXPLAIN CLEAN CONNECTION`` can name the
real client (``host:port``) of the sessions they list.

With ``--workers N`` each worker is a process of its own; the registry is then a directory
that all of them share, one small file per session (name: the backend pid, content: the
worker's pid and the client address), written at login and removed at close. The
supervisor removes the files of a worker that died (:func:`forget_worker`). Per session,
never per message: a login costs one small file write in that mode, nothing otherwise.
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
            path = self._directory / str(backend_pid)
            with contextlib.suppress(OSError):  # the registry is informative, never fatal
                path.write_text(f"{os.getpid()} {client_address}", encoding="utf-8")

    def remove(self, backend_pid: int) -> None:
        """The session of ``backend_pid`` is closed."""
        if self._local.pop(backend_pid, None) is None or self._directory is None:
            return
        with contextlib.suppress(OSError):
            (self._directory / str(backend_pid)).unlink()

    def lookup(self, backend_pids: Iterable[int]) -> dict[int, str]:
        """The client addresses of those of ``backend_pids`` that came through the proxy."""
        found: dict[int, str] = {}
        for pid in backend_pids:
            address = self._local.get(pid)
            if address is None and self._directory is not None:
                address = _read(self._directory / str(pid))
            if address is not None:
                found[pid] = address
        return found

    def snapshot(self) -> dict[int, str]:
        """Every session through the proxy (all workers) now: backend pid → address."""
        if self._directory is None:
            return dict(self._local)
        found: dict[int, str] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._directory):
                if entry.name.isdigit():
                    address = _read(Path(entry.path))
                    if address is not None:
                        found[int(entry.name)] = address
        found.update(self._local)
        return found


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    _, _, address = text.partition(" ")
    return address or None


def forget_worker(directory: Path, worker_pid: int) -> None:
    """Remove the entries written by ``worker_pid`` (it exited: its sessions are gone)."""
    prefix = f"{worker_pid} "
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            path = Path(entry.path)
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if path.read_text(encoding="utf-8").startswith(prefix):
                    path.unlink()
