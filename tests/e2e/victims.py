"""Victim sessions for CLEAN CONNECTION tests: real connections whose fate is checked.

Each victim is a psycopg connection (direct to the server, or through a proxy) with a
unique ``application_name``; :meth:`Victims.assert_fate` checks, in ``pg_stat_activity``
and by querying each victim, exactly which ones were terminated.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import psycopg

from tests.conftest import wait_until

_ids = itertools.count(1)


@dataclass
class Victim:
    name: str
    conn: psycopg.Connection
    pid: int
    busy: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)


class Victims:
    """A set of named sessions; ``admin`` is a direct superuser connection for checks."""

    def __init__(self, admin: psycopg.Connection) -> None:
        self.admin = admin
        self.all: dict[str, Victim] = {}

    def open(
        self,
        name: str,
        dsn: str,
        *,
        state: str = "idle",
        autocommit: bool = True,
    ) -> Victim:
        """Open a session named ``name`` on ``dsn`` and leave it ``idle``,
        ``idle in transaction`` or ``active`` (running a long pg_sleep in a thread)."""
        app = f"victim-{name}-{next(_ids)}"
        conn = psycopg.connect(dsn, application_name=app, autocommit=autocommit)
        pid = conn.info.backend_pid
        victim = Victim(name, conn, pid)
        if state == "idle in transaction":
            conn.autocommit = False
            conn.execute("select 1")
        elif state == "active":

            def run() -> None:
                try:
                    conn.execute("select pg_sleep(60)")
                except BaseException as exc:  # the termination we expect
                    victim.errors.append(exc)

            victim.busy = threading.Thread(target=run, daemon=True)
            victim.busy.start()
            wait_until(lambda: self._state(pid) == "active", 10, f"victim {name} to be active")
        self.all[name] = victim
        return victim

    def _state(self, pid: int) -> str | None:
        self.admin.execute("select pg_stat_clear_snapshot()")
        row = self.admin.execute(
            "select state from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        return row[0] if row else None

    def alive_pids(self) -> set[int]:
        self.admin.execute("select pg_stat_clear_snapshot()")
        rows = self.admin.execute("select pid from pg_stat_activity").fetchall()
        return {row[0] for row in rows}

    def assert_fate(self, terminated: set[str], timeout: float = 10) -> None:
        """Exactly the victims named in ``terminated`` are gone; every other one answers."""
        unknown = terminated - set(self.all)
        assert not unknown, f"unknown victims {unknown}"
        gone_pids = {self.all[name].pid for name in terminated}
        wait_until(lambda: not (gone_pids & self.alive_pids()), timeout, f"{terminated} to exit")
        alive = self.alive_pids()
        for name, victim in self.all.items():
            if name in terminated:
                if victim.busy is not None:
                    victim.busy.join(10)
                    assert victim.errors, f"{name}: its running query was not interrupted"
                else:
                    try:
                        victim.conn.execute("select 1")
                    except psycopg.OperationalError:
                        pass
                    else:
                        raise AssertionError(f"{name} still answers after being terminated")
            else:
                assert victim.pid in alive, f"innocent {name} was terminated"
                if victim.busy is None:
                    victim.conn.execute("select 1")

    def close(self) -> None:
        for victim in self.all.values():
            try:
                if victim.busy is not None and victim.busy.is_alive():
                    self.admin.execute("select pg_terminate_backend(%s)", (victim.pid,))
                    victim.busy.join(10)
                victim.conn.close()
            except Exception:
                pass
        self.all.clear()
