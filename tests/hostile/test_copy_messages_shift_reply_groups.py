"""COPY messages and reply attribution: the server ignores a Sync it reads in COPY IN,
so which Syncs open a response group depends on where the server was when it read them.
The frontend guesses from the client's CopyDone/CopyFail; the backend confirms each guess
from the server's CopyInResponse and the COPY's end, or gives attribution up. Certain or
nothing: a CLEAN CONNECTION is either shaped and audited as itself, or passed to the
server unrewritten (its syntax error, nothing runs), or, when it was already sent, recorded
with an unknown outcome and the session ended; never unshaped, unaudited or misattributed.

* A CopyDone or CopyFail outside COPY is ignored by the server (the protocol allows it).
  After a Sync the server answered already, it is known to be ignored.
* A Sync the server may or may not have read in COPY IN (a COPY that fails on its data
  stops reading anywhere) leaves the groups uncertain.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.wire import message
from tests.conftest import ProxyProcess
from tests.e2e.victims import Victims
from tests.hostile.replies import leaks, read_one, records, replies
from tests.rawpg import (
    COPY_DONE,
    COPY_FAIL,
    SYNC,
    error_fields,
    query_message,
    read_until_ready,
)


@pytest.mark.parametrize("ending", [COPY_DONE, COPY_FAIL], ids=["copydone", "copyfail"])
def test_copy_end_outside_copy_after_a_sync_keeps_clean_shaped_and_audited(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
    ending: bytes,
) -> None:
    """Sync, then a CopyDone/CopyFail the server ignores (not in COPY), then a CLEAN: the
    CLEAN runs; it must be shaped (tag, no INFO marker, no CONTEXT) and audited once."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-end-victim", proxy.dsn(db))
    session.sendall(SYNC + ending)
    assert read_until_ready(session)[-1][0] == b"Z"
    session.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(session)
    victims.assert_fate({"copy-end-victim"})
    assert not leaks(answer), answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    found = records(audit)
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found


def test_sync_ignored_in_copy_in_then_a_data_error_runs_no_clean(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Simple-Query COPY FROM STDIN; the client sends a Sync (the server ignores it in
    COPY IN) and bad CopyData: the COPY fails (22P02) and the server answers with one
    ReadyForQuery, and the client sends no CopyDone (the protocol needs none after the
    error). Whether the server read the Sync before it failed is not in the bytes, so the
    proxy rewrites nothing more in this session: the CLEAN is the server's syntax error,
    its victim lives, nothing is audited, and the statement after it is itself."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-sync-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(query_message("COPY t FROM STDIN"))
    kind, _ = read_one(session)
    assert kind == b"G"
    session.sendall(SYNC + message(b"d", b"not a number\n"))
    failed = replies(session)
    assert failed[0][0] == "error" and "integer" in failed[0][1], failed
    session.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(session)
    session.sendall(query_message("SELECT 1"))
    after = replies(session)
    assert answer == [("error", 'syntax error at or near "CLEAN"')], answer
    assert after == [("tag", "SELECT 1")], after
    victims.assert_fate(set())
    assert records(audit) == []


def test_copy_done_refuted_by_the_server_runs_no_clean(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """A Query, a Sync and a CopyDone in one write: when the proxy reads the CopyDone the
    Sync is unanswered, so it may have been read in a COPY of that Query; the server's
    answer (no CopyInResponse) shows it was not, and the guess is given up with
    attribution: the CLEAN sent next is the server's syntax error, nothing runs."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-refuted-victim", proxy.dsn(db))
    session.sendall(query_message("SELECT 1") + SYNC + COPY_DONE)
    assert replies(session) == [("tag", "SELECT 1")]
    read_until_ready(session)  # the Sync's own ReadyForQuery
    session.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(session)
    assert answer == [("error", 'syntax error at or near "CLEAN"')], answer
    session.sendall(query_message("SELECT 2"))
    assert replies(session) == [("tag", "SELECT 1")]
    victims.assert_fate(set())
    assert records(audit) == []


def test_clean_sent_behind_an_uncertain_copy_is_audited_as_unknown(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """The Sync, the bad data and a CLEAN in one write: the CLEAN was rewritten and sent
    before the COPY failed, and the server runs it, but its replies can no longer be told
    from others'. The proxy records it with an unknown outcome and ends the session with
    08P01 (it cannot shape what follows)."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-unknown-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(query_message("COPY t FROM STDIN"))
    kind, _ = read_one(session)
    assert kind == b"G"
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(SYNC + message(b"d", b"not a number\n") + query_message(statement))
    fatal = b""
    while chunk := session.recv(65536):
        fatal += chunk
    assert b"SFATAL" in fatal and b"C08P01" in fatal and b"attributed" in fatal, fatal
    found = records(audit)
    assert [(r["result"], r["statement"], r["sqlstate"]) for r in found] == [
        ("unknown", statement, "08P01")
    ], found


def test_copy_done_outside_copy_keeps_explain_errors_shaped(
    session: socket.socket,
) -> None:
    """The same shift for EXPLAIN CLEAN CONNECTION: its planned failure must reach the
    client as the statement's own error (3D000), never as the 22P02 'pgdp:explain:'
    sentinel the query uses internally."""
    session.sendall(SYNC + COPY_DONE)
    read_until_ready(session)
    session.sendall(
        query_message("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE no_such_database_here")
    )
    codes = []
    for kind, body in read_until_ready(session):
        if kind == b"E":
            fields = error_fields(body)
            codes.append((fields.get("C"), fields.get("M", "")))
    assert len(codes) == 1 and codes[0][0] == "3D000", codes
    assert "pgdp:" not in codes[0][1], codes


@pytest.mark.parametrize("data", [b"1\n2\n", b"not a number\n"], ids=["ok", "bad-data"])
def test_libpq_extended_protocol_copy_then_clean(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    data: bytes,
) -> None:
    """libpq's COPY through the extended protocol (PQsendQueryParams) sends a Sync right
    after the Execute, which the server reads in COPY IN and ignores. After a COPY that
    succeeded the proxy knows it (the CLEAN that follows is shaped and audited); after one
    that failed on its data it cannot know whether the server read that Sync first, so
    the CLEAN is the server's syntax error and nothing runs (certain or nothing)."""
    import psycopg
    from psycopg import pq

    proxy, audit = audited
    db = make_db()
    victims.open("libpq-copy-victim", proxy.dsn(db))
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (a int)")
        pgconn = conn.pgconn
        pgconn.send_query_params(b"COPY t FROM STDIN", None)
        result = pgconn.get_result()
        assert result is not None and result.status == pq.ExecStatus.COPY_IN
        pgconn.put_copy_data(data)
        pgconn.put_copy_end()
        statuses = []
        while (result := pgconn.get_result()) is not None:
            statuses.append(result.status)
        statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
        if data == b"1\n2\n":
            assert statuses == [pq.ExecStatus.COMMAND_OK]
            cursor = conn.execute(statement)
            assert cursor.statusmessage == "CLEAN CONNECTION"
            victims.assert_fate({"libpq-copy-victim"})
            found = records(audit)
            assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found
        else:
            assert statuses == [pq.ExecStatus.FATAL_ERROR]
            with pytest.raises(psycopg.errors.SyntaxError):
                conn.execute(statement)
            assert conn.execute("SELECT 7").fetchone() == (7,)
            victims.assert_fate(set())
            assert records(audit) == []
