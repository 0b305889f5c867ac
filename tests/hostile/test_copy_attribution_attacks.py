"""Attacks on reply attribution around COPY IN (helper atk5).

The proxy guesses at a CopyDone/CopyFail that the Syncs sent since the last Execute/Query
were ignored by a COPY IN, and has the server's CopyInResponse and the COPY's end confirm
the guess, or gives attribution up (certain or nothing). These tests play real clients
and hand-made byte sequences against a real server and check the property: a CLEAN that
runs has exactly one audit record, a CLEAN that does not run has none, no "pgdp:" marker
or PL/pgSQL CONTEXT reaches the client, no other statement's reply is shaped as a CLEAN's,
and honest clients (psycopg, asyncpg, psql) keep CLEAN working after COPY.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.wire import message
from tests.conftest import PgServer, ProxyProcess, backend_pids, wait_until
from tests.e2e.victims import Victims
from tests.hostile.replies import (
    connect_raw,
    describe,
    leaks,
    read_one,
    read_to_close,
    records,
    replies,
    summary,
)
from tests.rawpg import (
    COPY_DONE,
    COPY_FAIL,
    FLUSH,
    SYNC,
    bind,
    close_statement,
    copy_data,
    error_fields,
    execute,
    parse,
    query_message,
    read_until_ready,
    startup_packet,
)

LOCK_KEY = 7_310_451


@pytest.fixture
def locker(pg: PgServer) -> Iterator[psycopg.Connection]:
    """A direct connection holding an advisory lock that a CLEAN query waits on, so that
    the test knows the CLEAN reached the server and is not yet answered."""
    conn = pg.connect()
    conn.autocommit = False
    conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    yield conn
    conn.close()


def waiting_on_lock(admin: psycopg.Connection, app: str) -> bool:
    admin.execute("select pg_stat_clear_snapshot()")
    row = admin.execute(
        "select count(*) from pg_stat_activity where application_name = %s"
        " and wait_event_type = 'Lock'",
        (app,),
    ).fetchone()
    return bool(row and row[0])


# --- 1. A client protocol violation while a CLEAN is being answered ----------------------


@pytest.mark.parametrize(
    "violation",
    [
        COPY_DONE + SYNC + COPY_DONE,
        parse(b"", "SELECT 1") + query_message("SELECT 2"),
        b"Q\x00\x00\x00\x02",
    ],
    ids=["copydone-sync-copydone", "query-in-batch", "bad-length"],
)
def test_client_violation_while_a_clean_runs_leaves_an_audit_record(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    locker: psycopg.Connection,
    admin: psycopg.Connection,
    violation: bytes,
) -> None:
    """A CLEAN query reaches the server (it waits there on a lock), then the client sends
    what the frontend stream refuses: CopyDone, Sync, CopyDone ("Sync between two COPYs
    of one query string"), a Query inside an unsynced batch, or a malformed message. The
    frontend raises ProtocolViolation (not AttributionLost) because a CLEAN is being
    answered; the relay ends the session and aborts the server leg without telling the
    outstanding execution its outcome. The server still runs the CLEAN (the backend only
    notices the closed socket when it next writes): victims are terminated and no audit
    record is written. Expected: exactly one record (at least "unknown")."""
    proxy, audit = audited
    db = make_db()
    victims.open("violation-victim", proxy.dsn(db))
    app = "copy-atk-violation"
    sock = connect_raw(proxy, app)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    sock.sendall(query_message(f"SELECT pg_advisory_xact_lock({LOCK_KEY}); {statement}"))
    wait_until(lambda: waiting_on_lock(admin, app), 10, "the CLEAN query to wait on the lock")
    sock.sendall(violation)
    fatal = read_to_close(sock)
    sock.close()
    assert b"08P01" in fatal, fatal
    locker.commit()  # the CLEAN query goes on, on a server connection the proxy aborted
    victims.assert_fate({"violation-victim"})
    found = wait_until(lambda: records(audit), 10, "an audit record of the CLEAN that ran")
    assert len(found) == 1 and found[0]["statement"] == statement, found
    assert found[0]["result"] in ("ok", "unknown"), found


# --- 2. A prepared CLEAN the client "redefines" with a Parse the server refuses ----------


def test_parse_of_a_name_that_holds_a_clean_ends_the_session(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Parse "c" as a CLEAN; Parse "c" again as SELECT 1. The server refuses the second
    (42P05) if the first succeeded, and takes it if the first failed; the proxy cannot
    tell which, so it ends the session (08P01) rather than shape "c"'s executions by a
    guess (it used to forget "c", and its CLEAN then ran unshaped and unaudited). Nothing
    ran: the victim lives, nothing is audited. Not COPY-specific, found while attacking
    it."""
    proxy, audit = audited
    db = make_db()
    victims.open("redefine-victim", proxy.dsn(db))
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(parse(b"c", statement) + SYNC)
    read_until_ready(session)
    session.sendall(parse(b"c", "SELECT 1") + SYNC)
    fatal = read_to_close(session)
    assert b"SFATAL" in fatal and b"C08P01" in fatal, fatal
    victims.assert_fate(set())
    assert records(audit) == []


def test_close_skipped_after_a_failed_extended_copy_keeps_the_prepared_clean_shaped(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """The COPY flavour of the same forgetting: an extended-protocol COPY fails on its
    data (no Sync sent yet, so the proxy is certain of the groups); the server now skips
    everything up to the Sync, including a Close of the prepared CLEAN "c", which the
    frontend takes as done. "c" still exists on the server: executing it runs the CLEAN
    unshaped and unaudited."""
    proxy, audit = audited
    db = make_db()
    victims.open("close-skipped-victim", proxy.dsn(db))
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(parse(b"c", statement) + SYNC)
    read_until_ready(session)
    session.sendall(parse(b"", "COPY t FROM STDIN") + bind(b"", b"") + execute())
    kinds = [read_one(session)[0] for _ in range(3)]
    assert kinds == [b"1", b"2", b"G"], kinds
    session.sendall(copy_data(b"not a number\n"))
    kind, body = read_one(session)
    assert kind == b"E" and error_fields(body)["C"] == "22P02", body
    session.sendall(COPY_DONE + close_statement(b"c") + SYNC)
    read_until_ready(session)
    session.sendall(bind(b"", b"c") + execute() + SYNC)
    answer = replies(session)
    victims.assert_fate({"close-skipped-victim"})
    assert not leaks(answer), answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    assert summary(records(audit)) == [("ok", 1)], records(audit)


# --- 3. COPY sequences whose attribution must hold ---------------------------------------


def clean_works(sock: socket.socket, db: str, audit: Path, victims: Victims, name: str) -> None:
    """A CLEAN sent now runs, is shaped and audited once."""
    before = len(records(audit))
    sock.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(sock)
    assert not leaks(answer), answer
    assert answer == [("tag", "CLEAN CONNECTION")], answer
    victims.assert_fate({name})
    assert summary(records(audit)[before:]) == [("ok", 1)], records(audit)


def clean_refused(sock: socket.socket, db: str, audit: Path, victims: Victims) -> None:
    """Attribution was given up: a CLEAN is the server's syntax error and runs nothing."""
    before = len(records(audit))
    sock.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(sock)
    assert answer == [("error", 'syntax error at or near "CLEAN"')], answer
    victims.assert_fate(set())
    assert records(audit)[before:] == []


@pytest.mark.parametrize("data", [b"1\n2\n", b"x\n"], ids=["ok", "bad"])
def test_copy_then_clean_in_one_query_string(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
    data: bytes,
) -> None:
    """``COPY t FROM STDIN; CLEAN ...`` in one Query, with a Sync (ignored in COPY IN) and
    the data and CopyDone in one write: after a good COPY the CLEAN runs as the second
    statement, shaped and audited; after a bad one it never runs and has no record."""
    proxy, audit = audited
    db = make_db()
    victims.open("multi-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(query_message(f"COPY t FROM STDIN; {statement}"))
    assert read_one(session)[0] == b"G"
    session.sendall(copy_data(data) + COPY_DONE)
    answer = replies(session)
    assert not leaks(answer), answer
    if data == b"x\n":
        assert answer[0][0] == "error" and all(k != "tag" for k, _ in answer), answer
        victims.assert_fate(set())
        assert records(audit) == []
        return
    assert answer == [("tag", "COPY 2"), ("tag", "CLEAN CONNECTION")], answer
    victims.assert_fate({"multi-victim"})
    assert summary(records(audit)) == [("ok", 1)]


def test_clean_then_copy_with_a_sync_inside_the_copy(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """``CLEAN ...; COPY t FROM STDIN`` then Sync + data + CopyDone: the guess is confirmed
    by the COPY's CommandComplete, the CLEAN (first statement) is shaped and audited, and
    the Sync the server ignored opens no group (the next query is answered as itself)."""
    proxy, audit = audited
    db = make_db()
    victims.open("clean-copy-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(query_message(f"{statement}; COPY t FROM STDIN"))
    head = []
    while not head or head[-1][0] != b"G":
        head.append(read_one(session))
    session.sendall(SYNC + copy_data(b"5\n") + FLUSH + COPY_DONE)
    answer = describe(head) + replies(session)
    assert not leaks(answer), answer
    assert answer == [("tag", "CLEAN CONNECTION"), ("copy-in", ""), ("tag", "COPY 1")], answer
    victims.assert_fate({"clean-copy-victim"})
    assert summary(records(audit)) == [("ok", 1)]
    session.sendall(query_message("SELECT 41"))
    assert replies(session) == [("tag", "SELECT 1")]


def test_copy_failing_in_a_before_statement_trigger_with_sync_pipelined(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """A BEFORE STATEMENT trigger fails the COPY right after its CopyInResponse, before
    it reads anything; the client pipelined Query(COPY), Sync, data, CopyDone. The server
    answers the Sync (read after the error) with a ReadyForQuery of its own; the proxy
    must not take it for the COPY's: the CLEAN that follows is refused (syntax error),
    never misattributed, and the statement after it is answered as itself."""
    proxy, audit = audited
    db = make_db()
    victims.open("trigger-victim", proxy.dsn(db))
    session.sendall(
        query_message(
            "CREATE TEMP TABLE t (a int);"
            " CREATE FUNCTION pg_temp.no() RETURNS trigger LANGUAGE plpgsql"
            " AS $$BEGIN RAISE EXCEPTION 'no copy'; END$$;"
            " CREATE TRIGGER t_no BEFORE INSERT ON t FOR EACH STATEMENT"
            " EXECUTE FUNCTION pg_temp.no()"
        )
    )
    assert all(k != "error" for k, _ in replies(session))
    session.sendall(query_message("COPY t FROM STDIN") + SYNC + copy_data(b"1\n") + COPY_DONE)
    first = replies(session)
    assert ("copy-in", "") in first and ("error", "no copy") in first, first
    assert replies(session) == []  # the Sync's own ReadyForQuery
    clean_refused(session, db, audit, victims)
    session.sendall(query_message("SELECT 1"))
    assert replies(session) == [("tag", "SELECT 1")]


def test_copy_failing_in_a_before_statement_trigger_psql_style(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """The same trigger, psql's way (Query; data and CopyDone only after the
    CopyInResponse; no Sync): certain, the CLEAN after it works."""
    proxy, audit = audited
    db = make_db()
    victims.open("trigger-psql-victim", proxy.dsn(db))
    session.sendall(
        query_message(
            "CREATE TEMP TABLE t (a int);"
            " CREATE FUNCTION pg_temp.no() RETURNS trigger LANGUAGE plpgsql"
            " AS $$BEGIN RAISE EXCEPTION 'no copy'; END$$;"
            " CREATE TRIGGER t_no BEFORE INSERT ON t FOR EACH STATEMENT"
            " EXECUTE FUNCTION pg_temp.no()"
        )
    )
    replies(session)
    session.sendall(query_message("COPY t FROM STDIN"))
    assert read_one(session)[0] == b"G"
    session.sendall(copy_data(b"1\n") + COPY_DONE)
    assert ("error", "no copy") in replies(session)
    clean_works(session, db, audit, victims, "trigger-psql-victim")


def copy_waited_longer_than(admin: psycopg.Connection, app: str, seconds: float) -> bool:
    admin.execute("select pg_stat_clear_snapshot()")
    row = admin.execute(
        "select count(*) from pg_stat_activity where application_name = %s"
        " and query like 'COPY%%' and now() - query_start > make_interval(secs => %s)",
        (app, seconds),
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("sync", [False, True], ids=["no-sync", "sync"])
def test_statement_timeout_during_copy(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    admin: psycopg.Connection,
    sync: bool,
) -> None:
    """statement_timeout expires while the server waits for COPY data (it acts on it when
    the next message arrives). Without a Sync in the COPY the proxy is certain and CLEAN
    keeps working; with one (ignored by the server in COPY IN) it cannot know from the
    error alone, and CLEAN is refused, never misattributed."""
    proxy, audit = audited
    db = make_db()
    victims.open("timeout-victim", proxy.dsn(db))
    app = f"copy-atk-timeout-{sync}"
    sock = connect_raw(proxy, app)
    sock.sendall(query_message("CREATE TEMP TABLE t (a int); SET statement_timeout = 100"))
    replies(sock)
    sock.sendall(query_message("COPY t FROM STDIN"))
    assert read_one(sock)[0] == b"G"
    wait_until(lambda: copy_waited_longer_than(admin, app, 0.3), 10, "the timeout to pass")
    sock.sendall((SYNC if sync else b"") + copy_data(b"1\n") + COPY_DONE)
    failed = replies(sock)
    assert failed and "statement timeout" in failed[0][1], failed
    sock.sendall(query_message("SET statement_timeout = 0"))
    replies(sock)
    if sync:
        clean_refused(sock, db, audit, victims)
    else:
        clean_works(sock, db, audit, victims, "timeout-victim")
    sock.close()


def test_copy_to_stdout_with_sync_and_copydone_pipelined(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """COPY TO STDOUT, then a Sync and a CopyDone the server ignores (no COPY IN): the
    guess is refuted at the Sync's ReadyForQuery, nothing is misattributed."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-out-victim", proxy.dsn(db))
    session.sendall(query_message("COPY (SELECT 1) TO STDOUT") + SYNC + COPY_DONE)
    first = replies(session)
    assert ("copy-out", "") in first and ("tag", "COPY 1") in first, first
    assert replies(session) == []
    clean_refused(session, db, audit, victims)


def test_extended_batch_with_several_executes_and_a_copy(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Execute(CLEAN portal), Execute(COPY), Sync (read in COPY IN), data, CopyDone,
    Sync: the CLEAN at index 0 is shaped and audited, the COPY completes, and the session
    keeps rewriting (the guess is confirmed at index 1)."""
    proxy, audit = audited
    db = make_db()
    victims.open("batch-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(
        parse(b"c", statement)
        + bind(b"p1", b"c")
        + parse(b"k", "COPY t FROM STDIN")
        + bind(b"p2", b"k")
        + execute(b"p1")
        + execute(b"p2")
        + SYNC
    )
    head = []
    while not head or head[-1][0] != b"G":
        head.append(read_one(session))
    session.sendall(copy_data(b"3\n") + COPY_DONE + SYNC)
    answer = describe(head) + replies(session)
    assert not leaks(answer), answer
    assert [a for a in answer if a[0] == "tag"] == [("tag", "CLEAN CONNECTION"), ("tag", "COPY 1")]
    victims.assert_fate({"batch-victim"})
    assert summary(records(audit)) == [("ok", 1)]
    victims.all.pop("batch-victim").conn.close()
    db2 = make_db()
    victims.open("batch-victim-2", proxy.dsn(db2))
    clean_works(session, db2, audit, victims, "batch-victim-2")


def test_copyfail_after_sync_in_extended_copy_is_audited_or_refused(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """libpq's extended COPY ended by CopyFail (PQputCopyEnd with an error): Execute,
    Sync, CopyFail, Sync. The COPY's 57014 error cannot be told from a trigger's or a
    timeout's, so attribution is given up; a prepared-then-executed CLEAN afterwards is
    refused, never unshaped."""
    proxy, audit = audited
    db = make_db()
    victims.open("copyfail-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(parse(b"", "COPY t FROM STDIN") + bind(b"", b"") + execute() + SYNC)
    kinds = [read_one(session)[0] for _ in range(3)]
    assert kinds == [b"1", b"2", b"G"]
    session.sendall(copy_data(b"1\n") + COPY_FAIL + SYNC)
    failed = replies(session)
    assert failed and "COPY from stdin failed" in failed[0][1], failed
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(parse(b"", statement) + bind(b"", b"") + execute() + SYNC)
    answer = replies(session)
    assert answer == [("error", 'syntax error at or near "CLEAN"')], answer
    victims.assert_fate(set())
    assert records(audit) == []


@pytest.mark.parametrize(
    "late",
    [
        query_message("SELECT 1"),
        message(b"F", struct.pack("!I", 1) + b"\0\0" + b"\0\0" + b"\0\0"),
        parse(b"", "SELECT 1"),
    ],
    ids=["query", "functioncall", "parse"],
)
def test_non_copy_message_inside_copy_in_ends_the_session_cleanly(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    late: bytes,
) -> None:
    """A Query, FunctionCall or Parse read in COPY IN: PostgreSQL (14+) fails the COPY and
    ends the session (protocol synchronization lost). The proxy relays that, no crash."""
    proxy, _ = audited
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(query_message("COPY t FROM STDIN"))
    assert read_one(session)[0] == b"G"
    session.sendall(late)
    rest = read_to_close(session)
    assert b"unexpected message type" in rest, rest
    assert "Traceback" not in proxy.log()


def test_clean_pipelined_behind_copy_before_its_copy_in_response(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Query(COPY) and Query(CLEAN) in one write: the server reads the CLEAN in COPY IN,
    fails the COPY and ends the session; the CLEAN never ran. Its victim lives, and a
    record, if any, may only say "unknown"."""
    proxy, audit = audited
    db = make_db()
    victims.open("pipelined-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(query_message("COPY t FROM STDIN") + query_message(statement))
    rest = read_to_close(session)
    assert b"pgdp:" not in rest and b"PL/pgSQL" not in rest, rest
    victims.assert_fate(set())
    assert [r["result"] for r in records(audit)] in ([], ["unknown"]), records(audit)


def test_client_leaves_mid_copy_after_a_clean_in_the_same_batch(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Execute(CLEAN), Execute(COPY) without a Sync, then the client vanishes mid-COPY:
    the server ran the CLEAN; exactly one record."""
    proxy, audit = audited
    db = make_db()
    victims.open("leaver-victim", proxy.dsn(db))
    sock = connect_raw(proxy)
    sock.sendall(query_message("CREATE TABLE IF NOT EXISTS copy_atk_leave (a int)"))
    read_until_ready(sock)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    sock.sendall(
        parse(b"c", statement)
        + bind(b"p1", b"c")
        + parse(b"k", "COPY copy_atk_leave FROM STDIN")
        + bind(b"p2", b"k")
        + execute(b"p1")
        + execute(b"p2")
        + copy_data(b"1\n")
    )
    sock.close()
    victims.assert_fate({"leaver-victim"})
    found = wait_until(lambda: records(audit), 10, "the CLEAN's record")
    assert summary(found) == [("ok", 1)], found


def test_client_leaves_mid_copy_with_a_clean_queued_behind_it(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Query("COPY ...; CLEAN ...") then the client leaves inside the COPY: the drain's
    Sync + Terminate are read in COPY IN, the COPY fails, the CLEAN never runs: no
    record claims it ran ("unknown" at most), its victim lives."""
    proxy, audit = audited
    db = make_db()
    victims.open("queued-leaver-victim", proxy.dsn(db))
    sock = connect_raw(proxy, "copy-atk-queued-leaver")
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    sock.sendall(query_message(f"CREATE TEMP TABLE t (a int); COPY t FROM STDIN; {statement}"))
    while read_one(sock)[0] != b"G":
        pass
    sock.sendall(copy_data(b"1\n"))
    sock.close()
    wait_until(
        lambda: not backend_pids(victims.admin, "copy-atk-queued-leaver"), 10, "the session to end"
    )
    victims.assert_fate(set())
    assert [r["result"] for r in records(audit)] in ([], ["unknown"]), records(audit)


# --- 4. A guess refuted at the ReadyForQuery of a CLEAN that failed ----------------------


@pytest.mark.parametrize("ending", [COPY_DONE, COPY_FAIL], ids=["copydone", "copyfail"])
def test_failed_clean_then_refuted_guess_is_audited_once(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    ending: bytes,
) -> None:
    """Query(CLEAN), Sync, CopyDone in one write. The CLEAN ran and failed inside its
    program (no such database: 3D000), so it is audited "error" when its ErrorResponse
    is shaped. Its group's ReadyForQuery then refutes the CopyDone's guess (no COPY came)
    and _lose tells every slot of the current group at index >= completions its outcome
    is unknown: the failed CLEAN's slot too (an ErrorResponse does not count as a
    completion and _copy_check_ready passes no current_told). Two records for one
    execution ("error" then "unknown"). Expected: exactly one."""
    _, audit = audited
    statement = "CLEAN CONNECTION TO ALL FORCE FOR DATABASE copy_atk_no_such_db"
    session.sendall(query_message(statement) + SYNC + ending)
    answer = read_to_close(session)  # the session ends (attribution lost, 08P01)
    assert b"pgdp:" not in answer, answer
    found = wait_until(lambda: records(audit), 10, "the CLEAN's record")
    assert [r["result"] for r in found] == ["error"], found


# --- 5. Honest clients: COPY succeeding and failing, then CLEAN ---------------------------


@pytest.mark.parametrize("how", ["ok", "bad-data", "exception", "pipeline"])
def test_psycopg_copy_then_clean(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    how: str,
) -> None:
    """psycopg's cursor.copy() (simple Query; CopyDone, or CopyFail on an exception in
    the block), then CLEAN through the simple and the extended protocol and in a
    pipeline: CLEAN keeps working after every one."""
    proxy, audit = audited
    db = make_db()
    victims.open("psycopg-victim", proxy.dsn(db))
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (a int)")
        cur = conn.cursor()
        if how == "ok":
            with cur.copy("COPY t FROM STDIN") as copy:
                copy.write_row((1,))
                copy.write_row((2,))
        elif how == "bad-data":
            with (
                pytest.raises(psycopg.errors.InvalidTextRepresentation),
                cur.copy("COPY t FROM STDIN") as copy,
            ):
                copy.write(b"nope\n")
        elif how == "exception":
            with pytest.raises(ZeroDivisionError), cur.copy("COPY t FROM STDIN") as copy:
                copy.write_row((1,))
                1 / 0  # noqa: B018
        else:
            with conn.pipeline():
                conn.execute("SELECT 1")
            with cur.copy("COPY t FROM STDIN") as copy:
                copy.write_row((1,))
        statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
        if how == "pipeline":
            with conn.pipeline():
                cursor = conn.execute(statement)
                conn.execute("SELECT 1")
            assert cursor.statusmessage == "CLEAN CONNECTION"
        elif how == "exception":
            cursor = conn.execute(statement, prepare=True)  # extended protocol, named
            assert cursor.statusmessage == "CLEAN CONNECTION"
        else:
            assert conn.execute(statement).statusmessage == "CLEAN CONNECTION"
    victims.assert_fate({"psycopg-victim"})
    assert summary(records(audit)) == [("ok", 1)], records(audit)


@pytest.mark.parametrize(
    "how",
    [
        "records",
        "records-fail",
        "records-after-prepared-clean",
        "from-table",
        "to-table",
        "to-table-fail",
    ],
)
def test_asyncpg_copy_then_clean(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    tmp_path: Path,
    how: str,
) -> None:
    """asyncpg's COPY is a simple Query with no Sync (certain), but copy_records_to_table
    first introspects the table with Parse + Describe + Flush and no Sync, then sends the
    COPY Query. The proxy used to give attribution up at that Query (a Query inside an
    unsynced sequence), so CLEAN became a syntax error for the rest of the session, and a
    CLEAN in asyncpg's statement cache got the session killed with 08P01. The server had
    answered the whole sequence without an error, so the Query runs: CLEAN must keep
    working after every kind of asyncpg COPY, succeeding or failing."""
    asyncpg = pytest.importorskip("asyncpg")
    proxy, audit = audited
    db = make_db()
    victims.open("asyncpg-victim", proxy.dsn(db))
    empty = make_db()
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"

    async def run() -> str:
        conn = await asyncpg.connect(
            host=proxy.host, port=proxy.port, user=proxy.upstream.user, database="postgres"
        )
        try:
            await conn.execute("CREATE TEMP TABLE t (a int)")
            if how == "records-after-prepared-clean":
                # conn.fetch prepares the statement (asyncpg's statement cache): the
                # proxy then tracks a rewritten named statement.
                assert await conn.fetch(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {empty}") == []
                await conn.copy_records_to_table("t", records=[(1,), (2,)])
            elif how == "records":
                await conn.copy_records_to_table("t", records=[(1,), (2,)])
            elif how == "records-fail":
                await conn.execute("ALTER TABLE t ADD CHECK (a > 0)")  # fails on the server
                with pytest.raises(asyncpg.exceptions.CheckViolationError):
                    await conn.copy_records_to_table("t", records=[(-1,)])
            elif how == "from-table":
                await conn.execute("INSERT INTO t VALUES (1), (2)")
                await conn.copy_from_table("t", output=str(tmp_path / "out.txt"))
            elif how == "to-table":
                (tmp_path / "in.txt").write_text("1\n2\n")
                await conn.copy_to_table("t", source=str(tmp_path / "in.txt"))
            else:
                (tmp_path / "in.txt").write_text("1\nnope\n")
                with pytest.raises(asyncpg.exceptions.InvalidTextRepresentationError):
                    await conn.copy_to_table("t", source=str(tmp_path / "in.txt"))
            status = await conn.execute(statement)
            rows = await conn.fetch(statement.replace("TO ALL FORCE", "TO ALL CHECK"))
            assert rows == []
            return status
        finally:
            await conn.close()

    assert asyncio.run(run()) == "CLEAN CONNECTION"
    victims.assert_fate({"asyncpg-victim"})
    expected = [("ok", 1), ("ok", 0)]
    if how == "records-after-prepared-clean":
        expected = [("ok", 0), *expected]
    assert summary(records(audit)) == expected, records(audit)


@pytest.mark.skipif(shutil.which("psql") is None, reason="no psql")
@pytest.mark.parametrize("data", ["1\n2\n", "nope\n"], ids=["ok", "bad"])
def test_psql_copy_then_clean(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    tmp_path: Path,
    data: str,
) -> None:
    proxy, audit = audited
    db = make_db()
    victims.open("psql-victim", proxy.dsn(db))
    source = tmp_path / "data.txt"
    source.write_text(data)
    script = (
        "CREATE TEMP TABLE t (a int);\n"
        f"\\copy t from '{source}'\n"
        f"COPY t FROM STDIN;\n{data}\\.\n"
        f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db};\n"
    )
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-h",
            proxy.host,
            "-p",
            str(proxy.port),
            "-U",
            proxy.upstream.user,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=0",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "CLEAN CONNECTION" in result.stdout, (result.stdout, result.stderr)
    assert "pgdp:" not in result.stdout + result.stderr
    victims.assert_fate({"psql-victim"})
    assert summary(records(audit)) == [("ok", 1)], records(audit)


def test_parse_refused_over_an_existing_select_is_not_shaped_as_a_clean(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
) -> None:
    """The reverse of the refused Parse: "c" is SELECT 1 on the server; a Parse of "c" as
    a CLEAN is refused (42P05) but the frontend now takes "c" for a CLEAN. Executing "c"
    runs SELECT 1, whose reply must not be shaped as a CLEAN's (tag replaced) nor leave
    an audit record of a CLEAN that never ran."""
    _, audit = audited
    session.sendall(parse(b"c", "SELECT 1") + SYNC)
    read_until_ready(session)
    session.sendall(parse(b"c", "CLEAN CONNECTION TO ALL FORCE FOR DATABASE postgres") + SYNC)
    refused = replies(session)
    assert refused and "already exists" in refused[0][1], refused
    session.sendall(bind(b"", b"c") + execute() + SYNC)
    answer = replies(session)
    assert answer == [("tag", "SELECT 1")], answer
    session.sendall(query_message("SELECT 2"))  # a later round trip: anything due is written
    read_until_ready(session)
    assert records(audit) == [], records(audit)


def test_client_leaves_with_copy_data_half_sent_while_a_clean_runs(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    locker: psycopg.Connection,
    admin: psycopg.Connection,
) -> None:
    """``SELECT lock; CLEAN ...; COPY t FROM STDIN`` reaches the server and waits on the
    lock; the client streams the COPY's data ahead (allowed: the server reads it once the
    COPY begins) and vanishes in the middle of a CopyData message. With a message
    half-sent the proxy does not drain (client_gone returns None) and closes the server
    leg; the backend, once the lock is free, still runs the CLEAN: its victim is
    terminated and nothing is audited. Expected: one record."""
    proxy, audit = audited
    db = make_db()
    victims.open("half-sent-victim", proxy.dsn(db))
    app = "copy-atk-half-sent"
    sock = connect_raw(proxy, app)
    sock.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(sock)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    sock.sendall(
        query_message(f"SELECT pg_advisory_xact_lock({LOCK_KEY}); {statement}; COPY t FROM STDIN")
    )
    wait_until(lambda: waiting_on_lock(admin, app), 10, "the CLEAN query to wait on the lock")
    sock.sendall(b"d" + struct.pack("!I", 4 + 1000) + b"1\n2\n")
    sock.close()
    # A later round trip through the same proxy: the close above has been handled.
    other = connect_raw(proxy, "copy-atk-other")
    other.sendall(query_message("SELECT 1"))
    read_until_ready(other)
    other.close()
    locker.commit()
    victims.assert_fate({"half-sent-victim"})
    found = wait_until(lambda: records(audit), 10, "an audit record of the CLEAN that ran")
    assert len(found) == 1 and found[0]["result"] in ("ok", "unknown"), found


def _collect_until_marker(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    out = []
    seen_marker = False
    while True:
        msg = read_one(sock)
        out.append(msg)
        if msg[0] == b"D" and b"end-of-script" in msg[1]:
            seen_marker = True
        if seen_marker and msg[0] == b"Z":
            return out


def test_odd_copy_sequences_without_clean_pass_byte_for_byte(
    pg: PgServer, audited: tuple[ProxyProcess, Path]
) -> None:
    """A session without CLEAN, full of odd COPY traffic (Syncs and Flushes inside COPY
    IN, CopyDone/CopyFail outside COPY, COPY TO STDOUT with a Sync behind it, a failing
    COPY, a COPY in an extended batch with several Executes, two COPYs in one Query):
    whatever the proxy concludes about attribution, the client gets exactly the server's
    bytes."""
    proxy, _ = audited
    script = (
        query_message("CREATE TEMP TABLE t (a int)")
        + COPY_DONE
        + SYNC
        + COPY_FAIL
        + query_message("COPY t FROM STDIN")
        + SYNC
        + FLUSH
        + copy_data(b"1\n")
        + COPY_DONE
        + SYNC
        + COPY_DONE
        + query_message("COPY (SELECT 1) TO STDOUT")
        + SYNC
        + COPY_DONE
        + query_message("COPY t FROM STDIN; COPY t FROM STDIN")
        + copy_data(b"2\n")
        + COPY_DONE
        + copy_data(b"3\n")
        + COPY_DONE
        + parse(b"", "SELECT 1")
        + bind(b"", b"")
        + execute()
        + parse(b"k", "COPY t FROM STDIN")
        + bind(b"", b"k")
        + execute()
        + SYNC
        + copy_data(b"4\n")
        + COPY_DONE
        + SYNC
        + query_message("COPY t FROM STDIN")
        + copy_data(b"bad\n")
        + SYNC
        + COPY_DONE
        + query_message("SELECT count(*), 'end-of-script' FROM t")
    )

    def run(host: str, port: int) -> list[tuple[bytes, bytes]]:
        sock = socket.create_connection((host, port), timeout=15)
        try:
            sock.sendall(startup_packet("postgres", application_name="copy-atk-bytes"))
            read_until_ready(sock)
            sock.sendall(script)
            return _collect_until_marker(sock)
        finally:
            sock.close()

    direct = run(pg.host, pg.port)
    proxied = run(proxy.host, proxy.port)
    assert proxied == direct
    assert "Traceback" not in proxy.log()
