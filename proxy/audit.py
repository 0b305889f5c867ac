"""The audit record of a CLEAN CONNECTION execution, and where it goes.

One record per execution: who ran it (role, the real client address and port the proxy
saw, database, application), the statement, the outcome (``ok`` with the counts, or the
SQLSTATE and message), the duration, and every session terminated or skipped, with its
pid, role, database, application_name, client address, backend_start and state at the
time. For a terminated session that came through a proxy sharing this registry, the
record also carries ``real_client``: the address the proxy saw (pg_stat_activity only
shows the proxy's).

It is always logged on the ``pgdp.audit`` logger (one line in text format, the fields in
JSON format); with ``--audit-log FILE`` it is also appended to FILE as one JSON line,
flushed per record. :meth:`AuditTrail.reopen` (SIGHUP) reopens the file, for log rotation.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from .logfmt import value
from .peers import PeerRegistry

audit_log = logging.getLogger("pgdp.audit")


@dataclass(slots=True)
class AuditRecord:
    """One CLEAN CONNECTION execution (field names are the JSON keys)."""

    conn: int
    client: str
    user: str
    db: str
    app: str
    statement: str
    result: str  # "ok", "error", or "unknown" (sent to the server, replies unattributable)
    duration: float  # seconds
    role: str = ""  # the role it ran as (current_user: differs from user after SET ROLE)
    terminated: int = 0
    skipped: int = 0
    remaining: int = 0
    sqlstate: str = ""
    error: str = ""  # the error message, when the result is "error" (or why "unknown")
    sessions: list[dict[str, object]] = field(default_factory=list)
    time: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"event": "clean_connection", **asdict(self)}

    def text(self) -> str:
        """The one-line text form: logfmt fields, client text escaped."""
        if self.result == "ok":
            outcome = (
                f"result=ok terminated={self.terminated} skipped={self.skipped} "
                f"remaining={self.remaining}"
            )
        else:
            outcome = f"result={self.result} sqlstate={value(self.sqlstate)} message={self.error!r}"
            if self.terminated or self.skipped:  # signalled before it failed
                outcome += f" terminated={self.terminated} skipped={self.skipped}"
        sessions = json.dumps(self.sessions, ensure_ascii=True, separators=(",", ":"))
        return (
            f"clean_connection conn={self.conn} client={value(self.client)} "
            f"user={value(self.user) if self.user else '-'} "
            f"role={value(self.role) if self.role else '-'} "
            f"db={value(self.db) if self.db else '-'} app={value(self.app) if self.app else '-'} "
            f"statement={self.statement!r} {outcome} duration={self.duration:.3f}s "
            f"sessions={value(sessions)}"
        )


def _decode_json(detail: bytes) -> object:
    """The base64 of UTF-8 JSON the server-side program sent; None when malformed."""
    try:
        return json.loads(base64.b64decode(detail).decode("utf-8", "replace"))
    except (binascii.Error, ValueError):
        return None


def decode_caller(detail: bytes) -> dict[str, str]:
    """The role and application_name the server-side program ran with; {} when the
    detail is malformed."""
    data = _decode_json(detail)
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, str)}


def decode_sessions(detail: bytes) -> list[dict[str, object]]:
    """The sessions the server-side program reported; [] when the detail is missing or
    malformed (a record without its list beats no record)."""
    data = _decode_json(detail)
    if not isinstance(data, list):
        return []
    return [entry for entry in data if isinstance(entry, dict)]


class AuditTrail:
    """Emits :class:`AuditRecord` s: the ``pgdp.audit`` logger, the ``--audit-log`` file,
    and the listeners (metrics). ``peers``: the registry of sessions through the proxy
    (backend pid → real client address), None without one."""

    def __init__(self, path: Path | None = None, peers: PeerRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._file: IO[str] | None = None
        self.peers = peers
        self.listeners: list[Callable[[AuditRecord], None]] = []
        self.reopen(path)

    @property
    def path(self) -> Path | None:
        return self._path

    def reopen(self, path: Path | None) -> None:
        """(Re)open the audit file at ``path`` (None: no file), closing the previous one.
        An unopenable file is logged and audit records still go to the log."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._path = path
            if path is None:
                return
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            except OSError as exc:
                audit_log.error(
                    "cannot open audit log %s: %s", value(str(path)), exc.strerror or exc
                )

    def close(self) -> None:
        self.reopen(None)

    def emit(self, record: AuditRecord) -> None:
        if not record.time:
            now = time.time()
            record.time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (
                f".{int(now * 1000) % 1000:03d}Z"
            )
        if self.peers is not None:  # sessions that logged in after the statement was sent
            missing = [
                e["pid"]
                for e in record.sessions
                if e.get("outcome") == "terminated"
                and "real_client" not in e
                and isinstance(e.get("pid"), int)
            ]
            if missing:
                found = self.peers.lookup(missing)  # type: ignore[arg-type]
                for entry in record.sessions:
                    if entry.get("pid") in found:
                        entry["real_client"] = found[entry["pid"]]  # type: ignore[index]
        fields = record.as_dict()
        audit_log.info("%s", record.text(), extra={"event": "clean_connection", "fields": fields})
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(json.dumps(fields, ensure_ascii=True, default=str) + "\n")
                    self._file.flush()
                except OSError as exc:
                    audit_log.error("cannot write audit log: %s", exc.strerror or exc)
        for listener in self.listeners:
            listener(record)
