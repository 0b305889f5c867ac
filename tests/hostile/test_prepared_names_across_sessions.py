"""Two clients, one statement name: a prepared CLEAN CONNECTION statement of one session
must never shape the replies of another session's statement of the same name (the
streams share one empty dict of plans until a session tracks a statement)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import pq

from tests.conftest import ProxyProcess


def _clean(db: str) -> bytes:
    return ('CLEAN CONNECTION TO ALL FORCE FOR DATABASE "' + db.replace('"', '""') + '"').encode()


def test_same_statement_name_in_two_sessions(
    proxy: ProxyProcess, make_db: Callable[..., str]
) -> None:
    target = make_db()
    with (
        proxy.connect(application_name="iso-a") as a,
        proxy.connect(application_name="iso-b") as b,
        proxy.connect(application_name="iso-c") as c,
    ):
        # C starts idle before anyone tracks a statement; B prepares its own "s1" first.
        assert b.pgconn.prepare(b"s1", b"select 42 as answer").status == pq.ExecStatus.COMMAND_OK
        assert a.pgconn.prepare(b"s1", _clean(target)).status == pq.ExecStatus.COMMAND_OK
        assert a.pgconn.prepare(b"s2", _clean(target)).status == pq.ExecStatus.COMMAND_OK

        for _ in range(2):
            done = a.pgconn.exec_prepared(b"s1", [])
            assert done.status == pq.ExecStatus.COMMAND_OK, done.error_message
            assert done.command_status == b"CLEAN CONNECTION"

            mine = b.pgconn.exec_prepared(b"s1", [])
            assert mine.status == pq.ExecStatus.TUPLES_OK, mine.error_message
            assert mine.command_status == b"SELECT 1"
            assert (mine.ntuples, mine.get_value(0, 0)) == (1, b"42")

            # B never prepared s2: the server's own error, untouched.
            missing = b.pgconn.exec_prepared(b"s2", [])
            assert missing.status == pq.ExecStatus.FATAL_ERROR
            assert missing.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"

            # C, idle until now, prepares s2 as something else after A tracked its s2.
            assert c.pgconn.prepare(b"s2", b"select 7").status == pq.ExecStatus.COMMAND_OK
            seven = c.pgconn.exec_prepared(b"s2", [])
            assert seven.status == pq.ExecStatus.TUPLES_OK, seven.error_message
            assert (seven.command_status, seven.get_value(0, 0)) == (b"SELECT 1", b"7")
            c.pgconn.exec_(b"DEALLOCATE s2")

        # A's DISCARD ALL ends its tracking; B and C are unaffected either way.
        assert a.pgconn.exec_(b"DISCARD ALL").status == pq.ExecStatus.COMMAND_OK
        assert b.execute("select 1").fetchone() == (1,)
        assert c.execute("select 2").fetchone() == (2,)
    # A fresh session after all that: its s1 is its own.
    with psycopg.connect(proxy.dsn(), autocommit=True) as d:
        assert d.pgconn.prepare(b"s1", b"select 9").status == pq.ExecStatus.COMMAND_OK
        nine = d.pgconn.exec_prepared(b"s1", [])
        assert (nine.command_status, nine.get_value(0, 0)) == (b"SELECT 1", b"9")
