"""Attacks on the attribution rules of the last commits (helper atk6).

1. ``CleanRun`` shapes and audits only after its program's first INFO, marked with the
   rewrite's random token. The token is not secret from the client: the rewritten text is
   readable in pg_stat_activity.query (and pg_prepared_statements).
2. ``FrontendStream._runs_next``: the server is assumed to run a message that follows
   Parse/Bind/Close/Describe messages all answered without an error.
3. The unnamed Parse / Close keep-tracking rules.

Property checked: a CLEAN that runs has exactly one audit record, shaped replies (tag
``CLEAN CONNECTION``, no ``pgdp:`` INFO, no PL/pgSQL CONTEXT); a statement that is not a
CLEAN gets no record and keeps its own tag.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from proxy.wire import message
from tests.conftest import ProxyProcess, wait_until
from tests.e2e.victims import Victims
from tests.hostile.replies import connect_raw, describe, leaks, read_one, records, replies
from tests.rawpg import (
    FLUSH,
    SYNC,
    bind,
    close_statement,
    describe_statement,
    execute,
    parse,
    query_message,
    read_until_ready,
)

TOKEN = re.compile(r"pgdp:audit ([0-9a-f]{16}) ")
TIMEOUT_MS = 300


def token_of(admin: psycopg.Connection, app: str) -> str:
    """The marker token of the last text the session ``app`` sent (its rewritten CLEAN),
    as any session of the same role can read it in pg_stat_activity."""
    admin.execute("select pg_stat_clear_snapshot()")
    row = admin.execute(
        "select query from pg_stat_activity where application_name = %s", (app,)
    ).fetchone()
    assert row is not None
    found = TOKEN.search(row[0])
    assert found, row[0]
    return found.group(1)


def forged_do(token: str) -> str:
    return (
        "DO $$BEGIN "
        f"RAISE INFO USING MESSAGE = 'pgdp:audit {token} caller', "
        'DETAIL = encode(convert_to(\'{"role": "postgres", "application_name": '
        "\"forged\"}', 'UTF8'), 'base64'); "
        f"RAISE INFO 'pgdp:audit {token} terminated=999 skipped=0 remaining=0'; "
        "END$$"
    )


def past_statement_timeout() -> None:
    """The session's statement_timeout (started by its last Describe, not cancelled since:
    no Execute or Sync) has surely fired while the server waits for the next message."""
    deadline = time.monotonic() + 3 * TIMEOUT_MS / 1000
    wait_until(lambda: time.monotonic() > deadline, 10, "the statement timeout to fire")


# --- 1. A forged marker in the slot of an unnamed CLEAN the frontend kept planned --------


@pytest.mark.parametrize("before", ["pipelined-describe", "execute-before"])
def test_forged_marker_after_unnamed_reparse_gives_no_audit_record(
    audited: tuple[ProxyProcess, Path],
    make_db: Callable[..., str],
    admin: psycopg.Connection,
    before: str,
) -> None:
    """Parse "" = CLEAN (token T, readable in pg_stat_activity.query by any session of the
    role), Sync. Then, in one batch: an unanswered Describe (or an Execute), Parse "" = a
    DO raising INFO "pgdp:audit T caller" and "pgdp:audit T terminated=999", Bind "",
    Execute, Sync. ``_runs_next`` is False at that Parse (its predecessor is not answered
    yet / an Execute precedes), so the frontend keeps the unnamed CLEAN planned; the server
    runs the Parse (nothing failed) and the Execute runs the forged DO, whose INFO carries
    the right token: the proxy consumes it, retags DO as CLEAN CONNECTION and writes an
    "ok" audit record with terminated=999 for a CLEAN that never ran.
    Expected: no record, tag DO."""
    proxy, audit = audited
    db = make_db()
    app = f"atk6-forge-{before}"
    sock = connect_raw(proxy, app)
    sock.sendall(parse(b"", f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}") + SYNC)
    read_until_ready(sock)
    token = token_of(admin, app)
    if before == "pipelined-describe":
        head = describe_statement(b"")
    else:
        sock.sendall(parse(b"n", "SELECT 1") + SYNC)
        read_until_ready(sock)
        head = bind(b"", b"n") + execute()
    sock.sendall(head + parse(b"", forged_do(token)) + bind(b"", b"") + execute() + SYNC)
    answer = replies(sock)
    sock.close()
    assert records(audit) == [], records(audit)
    assert ("tag", "DO") in answer, answer


# --- 2./3. A message after answered ones that the server does not run -------------------


def _timeout_then(sock: socket.socket, name: bytes, victim_db: str) -> list[tuple[str, str]]:
    """statement_timeout fires while the server waits after an answered Describe; the next
    extended message (Parse "" or Close "s") is read and fails with the timeout before it
    runs, so the server keeps the prepared CLEAN; the frontend took it as run."""
    sock.sendall(query_message(f"SET statement_timeout = {TIMEOUT_MS}"))
    read_until_ready(sock)
    sock.sendall(parse(name, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {victim_db}") + SYNC)
    read_until_ready(sock)
    sock.sendall(describe_statement(name) + FLUSH)
    kinds = [read_one(sock)[0], read_one(sock)[0]]
    assert kinds == [b"t", b"n"], kinds  # ParameterDescription, NoData: answered
    past_statement_timeout()
    if name:
        sock.sendall(close_statement(name) + SYNC)
    else:
        sock.sendall(parse(b"", "SELECT 1") + SYNC)
    failed = replies(sock)
    assert ("error", "canceling statement due to statement timeout") in failed, failed
    # statement_timeout off again, without touching the unnamed statement
    sock.sendall(parse(b"t", "SET statement_timeout = 0") + bind(b"", b"t") + execute() + SYNC)
    read_until_ready(sock)
    sock.sendall(bind(b"", name) + execute() + SYNC)
    return replies(sock)


# Known and not fixed: the frontend takes a Parse or Close that follows answered
# messages as run, but a statement timeout armed by a Describe can fire as the server
# reads it, which then skips it. Fixing it means forgetting a CLEAN only on the server's
# ParseComplete/CloseComplete for that message. Strict: these tell when it is fixed.
@pytest.mark.xfail(
    strict=True, reason="a Parse/Close skipped by a statement timeout is taken as run"
)
@pytest.mark.parametrize("name", [b"", b"s"], ids=["unnamed-parse", "named-close"])
def test_statement_timeout_before_reparse_or_close_leaves_clean_unaudited(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    admin: psycopg.Connection,
    name: bytes,
) -> None:
    """Parse name = CLEAN, Sync; Describe name, Flush (answered: 't', 'n'; the Describe
    started statement_timeout, which no Execute or Sync cancels); the timeout fires while
    the server waits; then Parse "" (unnamed) or Close "s", Sync. ``_runs_next`` says the
    server surely runs it (one message before, answered, no error), so the frontend forgets
    the CLEAN; but PostgreSQL raises the pending statement timeout right after reading the
    message, before running it: the unnamed Parse never drops the old statement, the Close
    never closes it. Bind name / Execute then runs the CLEAN program unshaped: its victim
    is terminated, the "pgdp:audit <token> caller" INFO and the counts reach the client,
    the tag is DO, and no audit record is written. Expected: CLEAN shaped and one record."""
    proxy, audit = audited
    db = make_db()
    victims.open("timeout-victim", proxy.dsn(db))
    sock = connect_raw(proxy, f"atk6-timeout-{name.decode() or 'unnamed'}")
    answer = _timeout_then(sock, name, db)
    sock.close()
    victims.assert_fate({"timeout-victim"})
    assert leaks(answer) == [], answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    assert [r["result"] for r in records(audit)] == ["ok"], records(audit)


# --- 2. Batch counting that holds ------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        "describe-statement",
        "describe-portal",
        "empty-query",
        "notice-in-parse",
        "close-missing",
    ],
)
def test_query_after_answered_batch_keeps_clean_working(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    batch: str,
) -> None:
    """An unsynced batch the server answered in full (Describe statement: 't' + 'T'/'n';
    Describe portal; an empty query; ParameterStatus/notice between; Close of a missing
    name), Flush, then a simple Query with a CLEAN: accepted, shaped, audited once."""
    proxy, audit = audited
    db = make_db()
    victims.open("batch-victim", proxy.dsn(db))
    sock = connect_raw(proxy, f"atk6-batch-{batch}")
    if batch == "describe-statement":
        msgs, count = parse(b"x", "SELECT $1::int") + describe_statement(b"x"), 2
    elif batch == "describe-portal":
        msgs, count = (
            parse(b"", "SELECT 1") + bind(b"", b"") + message(b"D", b"P\0"),
            3,
        )
    elif batch == "empty-query":
        msgs, count = parse(b"", "") + bind(b"", b"") + message(b"D", b"P\0"), 3
    elif batch == "notice-in-parse":
        # SET in a Parse sends nothing; a ParameterStatus comes only at execution
        msgs, count = parse(b"", "SELECT 1") + close_statement(b"nothere"), 2
    else:
        msgs, count = close_statement(b"nothere") + message(b"C", b"Pnothere\0"), 2
    sock.sendall(msgs + FLUSH)
    got = []
    while len([k for k in got if k in (b"1", b"2", b"3", b"T", b"n")]) < count:
        got.append(read_one(sock)[0])
    sock.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(sock)
    sock.sendall(SYNC)
    read_until_ready(sock)
    sock.close()
    victims.assert_fate({"batch-victim"})
    assert leaks(answer) == [], answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    assert [r["result"] for r in records(audit)] == ["ok"]


def test_query_before_batch_answered_does_not_run_unaudited(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Parse/Bind then, in the same write, a Query with a CLEAN: the answers are not in yet,
    attribution is given up, the CLEAN is not rewritten (syntax error), nothing runs."""
    proxy, audit = audited
    db = make_db()
    victims.open("early-victim", proxy.dsn(db))
    sock = connect_raw(proxy, "atk6-early")
    sock.sendall(
        parse(b"", "SELECT 1")
        + bind(b"", b"")
        + query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    )
    answer = describe(read_until_ready(sock))
    sock.close()
    assert leaks(answer) == []
    assert any(kind == "error" and "syntax" in text for kind, text in answer), answer
    victims.assert_fate(set())
    assert records(audit) == []


# --- honest clients ----------------------------------------------------------------------


def test_honest_psycopg_and_asyncpg_keep_clean_working(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    proxy, audit = audited
    db = make_db()
    sql = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    expected = 0
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        for mode in ["simple", "extended", "pipeline"] + ["prepared"] * 6:
            victims.open(f"v-{expected}", proxy.dsn(db))
            if mode == "simple":
                cur = conn.cursor()
                cur.execute(sql, prepare=False)
            elif mode == "pipeline":
                with conn.pipeline():
                    cur = conn.execute(sql)
            else:
                cur = conn.execute(sql, prepare=None if mode == "prepared" else False)
            assert cur.statusmessage == "CLEAN CONNECTION"
            expected += 1
            wait_until(lambda n=expected: len(records(audit)) == n, 10, "the record")

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host=proxy.host, port=proxy.port, user="postgres", database="postgres"
        )
        try:
            victims.open("a-exec", proxy.dsn(db))
            assert await conn.execute(sql) == "CLEAN CONNECTION"
            victims.open("a-fetch", proxy.dsn(db))
            assert await conn.fetch(sql) == []
            await conn.execute("create temp table t(a int)")
            await conn.copy_records_to_table("t", records=[(1,), (2,)])
            victims.open("a-after-copy", proxy.dsn(db))
            assert await conn.execute(sql) == "CLEAN CONNECTION"
        finally:
            await conn.close()

    asyncio.run(run())
    wait_until(lambda: len(records(audit)) == expected + 3, 10, "the asyncpg records")
    assert {r["result"] for r in records(audit)} == {"ok"}


def test_honest_psql_keeps_clean_working(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    import subprocess

    proxy, audit = audited
    db = make_db()
    victims.open("psql-victim", proxy.dsn(db))
    done = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}",
            proxy.dsn("postgres"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "CLEAN CONNECTION" in done.stdout and "pgdp:" not in done.stdout + done.stderr
    victims.assert_fate({"psql-victim"})
    wait_until(lambda: len(records(audit)) == 1, 10, "the psql record")
