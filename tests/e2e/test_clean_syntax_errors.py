"""Statements starting with ``CLEAN`` that openGauss rejects, end to end (issue 9, point 3),
and the names openGauss accepts (point 2).

PostgreSQL rejects any string holding such a statement at the ``CLEAN`` token; through
the proxy the client sees openGauss's message and 1-based character position instead
(the failing token, the end of input, or the scanner's error for an unterminated quoted
identifier or comment), and nothing in the string runs: not a ``set_config`` nor an
INSERT before it. Checked with psycopg (simple query, extended protocol, a pipeline) and
psql against the real server.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims

# (statement, openGauss's message, the text whose first character is the error position;
# None: the end of input)
CASES = [
    ("CLEAN CONNECTIONS TO ALL FOR sales", 'syntax error at or near "CONNECTIONS"', "CONNECTIONS"),
    ("CLEAN", "syntax error at end of input", None),
    ('CLEAN "connection" TO ALL', 'syntax error at or near ""connection""', '"connection"'),
    ("clean table t", 'syntax error at or near "table"', "table"),
    (
        'CLEAN CONNECTION TO ALL FOR DATABASE ""',
        'zero-length delimited identifier at or near """"',
        '""',
    ),
    ("CLEAN CONNECTION TO ALL FOR 9lives", 'syntax error at or near "9"', "9lives"),
    ("CLEAN CONNECTION TO ALL FOR rownum", 'syntax error at or near "rownum"', "rownum"),
    ("CLEAN CONNECTION TO ALL FORCE INDEX", 'syntax error at or near "INDEX"', "INDEX"),
]
# Unterminated: the statement runs to the end of the string (the message quotes the rest).
UNTERMINATED = [
    (
        'CLEAN CONNECTION TO ALL FOR DATABASE "sales',
        'unterminated quoted identifier at or near ""sales"',
        '"sales',
    ),
    (
        "CLEAN CONNECTION TO ALL /* never closed",
        'unterminated /* comment at or near "/* never closed"',
        "/*",
    ),
]
IDS = [c[0] for c in CASES + UNTERMINATED]


def expected_position(query: str, anchor: str | None) -> str:
    return str(len(query) + 1 if anchor is None else query.rindex(anchor) + 1)


@pytest.fixture
def home(pg: PgServer, make_db: Callable[..., str]) -> str:
    """A database with an empty table ``t``."""
    name = make_db()
    with pg.connect(dbname=name) as conn:
        conn.execute("create table t (v text)")
    return name


def assert_nothing_ran(conn: psycopg.Connection) -> None:
    assert conn.execute("select pg_catalog.current_setting('pgdp.ran', true)").fetchone() in (
        (None,),
        ("",),
    )
    assert conn.execute("select count(*) from t").fetchone() == (0,)
    assert conn.execute("select pg_catalog.to_regclass('made_here')").fetchone() == (None,)


# EXPLAIN CLEAN ... gives the same errors as the statement, one word further on.
EXPLAINED = [("EXPLAIN " + s, message, anchor) for s, message, anchor in CASES + UNTERMINATED]
EXPLAINED_IDS = ["EXPLAIN " + i for i in IDS]


@pytest.mark.parametrize(
    ("statement", "message", "anchor"), CASES + UNTERMINATED + EXPLAINED, ids=IDS + EXPLAINED_IDS
)
def test_simple_query(
    proxy: ProxyProcess, home: str, statement: str, message: str, anchor: str | None
) -> None:
    # non-ASCII before the statement: positions are characters, not bytes
    query = (
        "select pg_catalog.set_config('pgdp.ran', 'yes', false); create table made_here (); "
        "insert into t values ('ünï'); " + statement
    )
    with proxy.connect(dbname=home) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        diag = info.value.diag
        assert diag.sqlstate == "42601"
        assert diag.message_primary == message
        assert diag.statement_position == expected_position(query, anchor)
        assert diag.context is None
        assert_nothing_ran(conn)


@pytest.mark.parametrize(("statement", "message", "anchor"), CASES[:3], ids=IDS[:3])
def test_simple_query_statement_after(
    proxy: ProxyProcess, home: str, statement: str, message: str, anchor: str | None
) -> None:
    """With a statement after it, the terminating ``;`` is the end of input's token."""
    query = f"insert into t values ('x'); {statement}; select pg_catalog.set_config('pgdp.ran', 'yes', false)"
    if anchor is None:
        message, anchor = 'syntax error at or near ";"', f"{statement};"[len(statement) :]
    with proxy.connect(dbname=home) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == message
        position = query.index(anchor, query.index(statement)) + 1
        assert info.value.diag.statement_position == str(position)
        assert_nothing_ran(conn)


@pytest.mark.parametrize(
    ("statement", "message", "anchor"), CASES + UNTERMINATED + EXPLAINED, ids=IDS + EXPLAINED_IDS
)
def test_extended_protocol(
    proxy: ProxyProcess, home: str, statement: str, message: str, anchor: str | None
) -> None:
    with proxy.connect(dbname=home) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(statement, prepare=True)
        assert info.value.diag.sqlstate == "42601"
        assert info.value.diag.message_primary == message
        assert info.value.diag.statement_position == expected_position(statement, anchor)
        assert conn.execute("select 'usable'", prepare=True).fetchone() == ("usable",)


def test_pipeline_runs_nothing(proxy: ProxyProcess, home: str) -> None:
    """Parse/Bind/Execute of an INSERT, then the invalid CLEAN, one Sync: all rolled back."""
    statement, message, anchor = CASES[0]
    with proxy.connect(dbname=home) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info, conn.pipeline():
            conn.execute("insert into t values (%s)", ("x",))
            conn.execute("select pg_catalog.set_config('pgdp.ran', 'yes', false)")
            conn.execute(statement)
        assert info.value.diag.message_primary == message
        assert info.value.diag.statement_position == expected_position(statement, anchor)
        assert_nothing_ran(conn)


# --- psql ----------------------------------------------------------------------------

PSQL = shutil.which("psql")
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql is not installed")


def run_psql(proxy: ProxyProcess, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
    dsn = make_conninfo(host=proxy.host, port=proxy.port, dbname=dbname, user=proxy.upstream.user)
    return subprocess.run(
        [PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


@needs_psql
@pytest.mark.parametrize(
    ("statement", "message", "anchor"), CASES + UNTERMINATED + EXPLAINED, ids=IDS + EXPLAINED_IDS
)
def test_psql(
    pg: PgServer,
    proxy: ProxyProcess,
    home: str,
    statement: str,
    message: str,
    anchor: str | None,
) -> None:
    query = "create table made_here (); insert into t values ('x'); " + statement
    result = run_psql(proxy, home, "-c", query)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"ERROR:  {message}"
    # psql shows (a window of) the line and a caret under the reported character
    prefix = "LINE 1: "
    shown = lines[1].removeprefix(prefix)
    column = lines[2].index("^") - len(prefix)
    position = int(expected_position(query, anchor))
    before, after = shown[:column].removeprefix("..."), shown[column:].removesuffix("...")
    assert before and query[: position - 1].endswith(before)
    assert query[position - 1 :].startswith(after)
    assert (after == "") == (anchor is None)
    with pg.connect(dbname=home) as conn:
        assert_nothing_ran(conn)


# --- names openGauss accepts ---------------------------------------------------------


def test_opengauss_names_clean_their_sessions(
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    """``#`` in a name, and words PostgreSQL reserves but openGauss does not (``system_user``
    is reserved from PostgreSQL 16)."""
    hashed, isnull = make_db("sales#2024"), make_db("isnull")
    system_user = make_db("system_user")
    lateral = make_role("lateral")
    victims.open("hashed", pg.dsn(hashed))
    victims.open("isnull", pg.dsn(isnull))
    victims.open("system_user", pg.dsn(system_user))
    victims.open("lateral", pg.dsn(user=lateral, password="pw"))
    victims.open("innocent", pg.dsn())
    with proxy.connect() as conn:
        for statement in (
            "CLEAN CONNECTION TO ALL FORCE FOR DATABASE sales#2024",
            "CLEAN CONNECTION TO ALL FORCE FOR isnull",
            "CLEAN CONNECTION TO ALL FORCE TO USER lateral",
            "CLEAN CONNECTION TO ALL FORCE FOR system_user",
        ):
            assert conn.execute(statement).statusmessage == "CLEAN CONNECTION"
    victims.assert_fate({"hashed", "isnull", "lateral", "system_user"})
