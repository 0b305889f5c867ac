"""CLEAN CONNECTION over every protocol path, end to end (issue 4).

Each test drives the statement through a real client (psycopg simple query, multi-statement
strings, ``prepare=True``, pipeline mode, binary results; asyncpg simple and extended; psql
with ``-f``, ``-c`` and stdin) via the proxy against the real server, and checks both the
client-visible reply (tags, no rows, errors with their SQLSTATE, message and position) and
the fate of real victim sessions.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims

CLEAN = "CLEAN CONNECTION TO ALL FORCE FOR DATABASE {}"


def clean(db: str) -> str:
    """The statement that force-cleans ``db``, the name written as a quoted identifier."""
    return CLEAN.format('"' + db.replace('"', '""') + '"')


def tags_of(cur: psycopg.Cursor) -> list[tuple[str | None, list[tuple] | None]]:
    """(statusmessage, rows or None when the result has no columns) for every result set."""
    results = []
    while True:
        rows = cur.fetchall() if cur.description is not None else None
        results.append((cur.statusmessage, rows))
        if not cur.nextset():
            return results


def table_exists(pg: PgServer, db: str, table: str) -> bool:
    with pg.connect(dbname=db) as conn:
        return conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0]


# --- simple query ----------------------------------------------------------------------


def test_simple_query_single_statement(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target, other = make_db(), make_db()
    victims.open("direct-idle", pg.dsn(target))
    victims.open("direct-in-tx", pg.dsn(target), state="idle in transaction")
    victims.open("proxied-idle", proxy.dsn(target))
    victims.open("innocent", pg.dsn(other))
    with proxy.connect() as conn:
        cur = conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {target}")
        assert cur.statusmessage == "CLEAN CONNECTION"
        assert cur.description is None
        assert cur.nextset() is None
        assert conn.execute("select 'after'").fetchone() == ("after",)
    victims.assert_fate({"direct-idle", "direct-in-tx", "proxied-idle"})


def test_multi_statement_tags_in_order(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("idle", pg.dsn(target))
    victims.open("active", pg.dsn(target), state="active")
    victims.open("innocent", pg.dsn())
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute(f"select 1; {clean(target)}; select 2; do $$ begin end $$;;")
        assert tags_of(cur) == [
            ("SELECT 1", [(1,)]),
            ("CLEAN CONNECTION", None),
            ("SELECT 1", [(2,)]),
            ("DO", None),  # the client's own DO keeps its tag
        ]
    victims.assert_fate({"idle", "active"})


def test_invalid_clean_in_multi_statement_runs_nothing(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target, home = make_db(), make_db()
    with pg.connect(dbname=home) as conn:
        conn.execute("create table t (v text)")
    victims.open("idle", pg.dsn(target))
    # A valid CLEAN before the invalid one: it must not run either.
    query = (
        "insert into t values ('ünï'); "
        f"{clean(target)}; "
        f"CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE {target}; select 2"
    )
    with proxy.connect(dbname=home) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        diag = info.value.diag
        assert diag.sqlstate == "42601"
        assert diag.message_primary == 'syntax error at or near "CHECK"'
        assert diag.statement_position == str(query.index("CHECK") + 1)
        assert diag.context is None
        assert conn.execute("select count(*) from t").fetchone() == (0,)
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    victims.assert_fate(set())


def test_invalid_clean_at_end_of_input(proxy: ProxyProcess) -> None:
    query = "select 1; CLEAN CONNECTION TO ALL FORCE FOR"
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == "syntax error at end of input"
        assert info.value.diag.statement_position == str(len(query) + 1)
        assert conn.execute("select 1").fetchone() == (1,)


def test_invalid_clean_in_transaction_aborts_it(
    pg: PgServer, proxy: ProxyProcess, make_db: Callable[..., str]
) -> None:
    home = make_db()
    with pg.connect(dbname=home) as conn:
        conn.execute("create table t (v int)")
    with proxy.connect(dbname=home, autocommit=False) as conn:
        conn.execute("insert into t values (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        query = "insert into t values (2); CLEAN CONNECTION TO NODE () FOR DATABASE postgres"
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == 'syntax error at or near ")"'
        assert info.value.diag.statement_position == str(query.index("()") + 2)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select count(*) from t").fetchone() == (0,)
        conn.execute("insert into t values (3)")
        conn.commit()
    with pg.connect(dbname=home) as conn:
        assert conn.execute("select array_agg(v) from t").fetchone() == ([3],)


def test_error_after_valid_clean_keeps_client_positions(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    """Errors of other statements in a rewritten string point into the client's text."""
    target, other = make_db(), make_db()
    victims.open("idle", pg.dsn(target))
    victims.open("other", pg.dsn(other))
    query = f"select 'ünï'; {clean(target)}; {clean(other)};\nselect * from no_such_table"
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            conn.execute(query)
        assert info.value.diag.statement_position == str(query.index("no_such_table") + 1)
    victims.assert_fate({"idle", "other"})  # the CLEANs before it ran, as PostgreSQL would


def test_syntax_error_after_valid_clean_keeps_client_positions(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("idle", pg.dsn(target))
    query = f"{clean(target)}; selec 2"
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == 'syntax error at or near "selec"'
        assert info.value.diag.statement_position == str(query.index("selec") + 1)
    victims.assert_fate(set())  # a syntax error anywhere: nothing in the string runs


# --- psql ----------------------------------------------------------------------------

PSQL = shutil.which("psql")
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql is not installed")


def run_psql(
    proxy: ProxyProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    dsn = make_conninfo(
        host=proxy.host, port=proxy.port, dbname="postgres", user=proxy.upstream.user
    )
    return subprocess.run(
        [PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


def database_exists(pg: PgServer, name: str) -> bool:
    return bool(pg.query("select 1 from pg_database where datname = %s", (name,)))


def assert_clean_output(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["CLEAN CONNECTION", "DROP DATABASE"]
    assert result.stderr == ""


@needs_psql
@pytest.mark.parametrize("mode", ["-f", "-c", "stdin"])
def test_psql_clean_then_drop_database(
    mode: str,
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    tmp_path,
) -> None:
    target = make_db()
    victims.open("active", pg.dsn(target), state="active")
    victims.open("proxied-idle", proxy.dsn(target))
    script = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {target};\nDROP DATABASE {target};\n"
    if mode == "-f":
        path = tmp_path / "script.sql"
        path.write_text(script)
        result = run_psql(proxy, "-f", str(path))
    elif mode == "-c":
        result = run_psql(
            proxy,
            "-c",
            f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {target}",
            "-c",
            f"DROP DATABASE {target}",
        )
    else:
        result = run_psql(proxy, stdin=script)
    assert_clean_output(result)
    assert not database_exists(pg, target)
    victims.assert_fate({"active", "proxied-idle"})


@needs_psql
def test_psql_error_has_no_context(proxy: ProxyProcess, tmp_path) -> None:
    result = run_psql(proxy, "-c", "CLEAN CONNECTION TO ALL FORCE FOR DATABASE nope")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == 'ERROR:  database "nope" does not exist\n'

    path = tmp_path / "script.sql"
    path.write_text("select 1;\nCLEAN CONNECTION TO ALL FORCE FOR DATABASE nope;\nselect 2;\n")
    result = run_psql(proxy, "-f", str(path))
    assert result.returncode == 3  # ON_ERROR_STOP in a script
    assert result.stderr == f'psql:{path}:2: ERROR:  database "nope" does not exist\n'
    assert "2" not in result.stdout.split("(1 row)")[-1]


@needs_psql
def test_psql_syntax_error_caret(proxy: ProxyProcess) -> None:
    query = "CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE d"
    result = run_psql(proxy, "-c", query)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    prefix = "LINE 1: "
    assert lines == [
        'ERROR:  syntax error at or near "CHECK"',
        prefix + query,
        " " * (len(prefix) + query.index("CHECK")) + "^",
    ]


@needs_psql
def test_psql_notices_and_warnings_have_no_context(proxy: ProxyProcess) -> None:
    """A CLEAN with nothing to do prints only its tag: no INFO audit line, no CONTEXT."""
    result = run_psql(proxy, "-c", "CLEAN CONNECTION TO ALL FOR DATABASE template1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "CLEAN CONNECTION\n"
    assert result.stderr == ""


# --- extended protocol: psycopg ---------------------------------------------------------


def test_psycopg_named_prepared_statement_executed_repeatedly(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("innocent", pg.dsn())
    terminated: set[str] = set()
    with proxy.connect() as conn:
        for round_ in range(3):
            fresh = {f"direct-{round_}", f"proxied-{round_}", f"in-tx-{round_}"}
            victims.open(f"direct-{round_}", pg.dsn(target))
            victims.open(f"proxied-{round_}", proxy.dsn(target))
            victims.open(f"in-tx-{round_}", pg.dsn(target), state="idle in transaction")
            cur = conn.execute(clean(target), prepare=True)
            assert cur.statusmessage == "CLEAN CONNECTION"
            assert cur.description is None
            terminated |= fresh
            victims.assert_fate(terminated)
        prepared = conn.execute("select count(*) from pg_prepared_statements").fetchone()
        assert prepared == (1,)  # one named statement, executed three times
        conn.execute("select 'usable'", prepare=True)


def test_psycopg_pipeline_mixes_selects_and_clean(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    first, second = make_db(), make_db()
    victims.open("first", pg.dsn(first))
    victims.open("second", proxy.dsn(second), state="idle in transaction")
    victims.open("innocent", pg.dsn())
    with proxy.connect() as conn:
        with conn.pipeline():
            cursors = [
                conn.execute("select %s::int", (1,)),
                conn.execute(clean(first)),
                conn.execute("select 'two'"),
                conn.execute(clean(second), prepare=True),
                conn.execute("select g from generate_series(1, 3) g"),
                conn.execute(clean(first), prepare=True),
                conn.execute("select %s::text", ("last",)),
            ]
        results = [
            (cur.statusmessage, cur.fetchall() if cur.description is not None else None)
            for cur in cursors
        ]
        assert results == [
            ("SELECT 1", [(1,)]),
            ("CLEAN CONNECTION", None),
            ("SELECT 1", [("two",)]),
            ("CLEAN CONNECTION", None),
            ("SELECT 3", [(1,), (2,), (3,)]),
            ("CLEAN CONNECTION", None),
            ("SELECT 1", [("last",)]),
        ]
    victims.assert_fate({"first", "second"})


def test_psycopg_pipeline_error_in_clean_skips_the_rest(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("idle", pg.dsn(target))
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.InvalidCatalogName) as info, conn.pipeline():
            ok = conn.execute("select 1")
            conn.execute(clean("nope"))
            conn.execute(clean(target))
        assert info.value.diag.message_primary == 'database "nope" does not exist'
        assert info.value.diag.context is None
        assert ok.fetchone() == (1,)
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    victims.assert_fate(set())  # the CLEAN after the error was skipped by the server


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_cursor_extended_binary(
    binary: bool,
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    target = make_db()
    victims.open("idle", pg.dsn(target))
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute(clean(target), binary=binary)
        assert cur.statusmessage == "CLEAN CONNECTION"
        assert cur.description is None
        assert cur.rowcount == -1
        cur.execute("select %s::int", (7,), binary=binary)
        assert cur.fetchone() == (7,)
    victims.assert_fate({"idle"})


def test_psycopg_extended_syntax_error(proxy: ProxyProcess) -> None:
    query = "CLEAN CONNECTION TO ALL CHECK CHECK FOR DATABASE d"
    with proxy.connect() as conn:
        for prepare in (False, True):
            with pytest.raises(psycopg.errors.SyntaxError) as info:
                conn.execute(query, prepare=prepare)
            assert info.value.diag.message_primary == 'syntax error at or near "CHECK"'
            assert info.value.diag.statement_position == str(query.rindex("CHECK") + 1)
        assert conn.execute("select 1", prepare=True).fetchone() == (1,)


# --- asyncpg (extended protocol for everything with parameters or prepare) --------------


def asyncpg_connect(proxy: ProxyProcess, dbname: str = "postgres") -> asyncpg.Connection:
    return asyncpg.connect(
        host=proxy.host, port=proxy.port, user=proxy.upstream.user, database=dbname, ssl=False
    )


def test_asyncpg_simple_and_extended(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("innocent", pg.dsn())

    async def scenario(step: Callable[[str], None]) -> None:
        conn = await asyncpg_connect(proxy)
        try:
            step("simple")
            assert await conn.execute(clean(target)) == "CLEAN CONNECTION"
            step("fetch")
            assert await conn.fetch(clean(target)) == []
            step("fetch-cached")  # the statement cache re-executes the named statement
            assert await conn.fetch(clean(target)) == []
            stmt = await conn.prepare(clean(target))
            assert stmt.get_attributes() == ()
            assert stmt.get_parameters() == ()
            for i in range(2):
                step(f"prepared-{i}")
                assert await stmt.fetch() == []
                assert stmt.get_statusmsg() == "CLEAN CONNECTION"
            assert await conn.fetchval("select $1::int + 1", 41) == 42
        finally:
            await conn.close()

    terminated: set[str] = set()

    def step(label: str) -> None:
        # Runs in the event loop thread between awaits: check the previous step, then open
        # this step's victims (blocking, but nothing else is pending on the loop).
        victims.assert_fate(terminated)
        victims.open(f"{label}-direct", pg.dsn(target))
        victims.open(f"{label}-proxied", proxy.dsn(target))
        terminated.update({f"{label}-direct", f"{label}-proxied"})

    asyncio.run(scenario(step))
    victims.assert_fate(terminated)


def test_asyncpg_errors_map_to_exception_classes(
    pg: PgServer, proxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("idle", pg.dsn(target))
    bad = "CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE x"

    async def scenario() -> None:
        conn = await asyncpg_connect(proxy)
        try:
            with pytest.raises(asyncpg.InvalidCatalogNameError) as info:
                await conn.execute(clean("nope"))
            assert info.value.message == 'database "nope" does not exist'
            assert info.value.context is None
            with pytest.raises(asyncpg.InvalidCatalogNameError):
                await conn.fetch(clean("nope"))
            with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
                await conn.execute(bad)
            assert syntax.value.sqlstate == "42601"
            assert syntax.value.message == 'syntax error at or near "CHECK"'
            assert syntax.value.position == str(bad.index("CHECK") + 1)
            with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
                await conn.prepare(bad)
            assert syntax.value.position == str(bad.index("CHECK") + 1)
            with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
                await conn.fetch(f"select 1; {clean(target)}")
            # one statement per Parse: the server's own refusal, nothing ran
            assert syntax.value.message == (
                "cannot insert multiple commands into a prepared statement"
            )
            assert await conn.fetchval("select 'usable'") == "usable"
        finally:
            await conn.close()

    asyncio.run(scenario())
    victims.assert_fate(set())


# --- names are data ---------------------------------------------------------------------

HOSTILE_NAMES = ["x';drop table t;--", 'a"b', "$$x$$", "back\\slash", "ünï", "semi;colon -- x"]


def direct_dsn(pg: PgServer, dbname: str, user: str | None = None) -> str:
    return make_conninfo(host=pg.host, port=pg.port, dbname=dbname, user=user or pg.user)


def snapshot_catalog(pg: PgServer) -> tuple[list, list]:
    databases = pg.query("select datname from pg_database order by 1")
    roles = pg.query("select rolname from pg_roles order by 1")
    return databases, roles


def test_hostile_names_are_inert(
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    """Databases and roles named like SQL are cleaned by name and nothing else happens,
    with the default settings and with ``standard_conforming_strings`` off."""
    home = make_db()
    with pg.connect(dbname=home) as conn:
        conn.execute("create table t (v int)")
        conn.execute("insert into t values (1)")
    for name in HOSTILE_NAMES:
        make_db(name)
        make_role(name)
    victims.open("innocent-home", direct_dsn(pg, home))
    victims.open("innocent-postgres", pg.dsn())
    catalog = snapshot_catalog(pg)

    terminated: set[str] = set()
    with proxy.connect(dbname=home) as conn:
        for setting in ("on", "off"):
            conn.execute(f"set standard_conforming_strings = {setting}")
            for i, name in enumerate(HOSTILE_NAMES):
                victims.open(f"{setting}-db-{i}", direct_dsn(pg, name))
                victims.open(f"{setting}-db-proxied-{i}", make_conninfo(proxy.dsn(), dbname=name))
                victims.open(f"{setting}-role-{i}", direct_dsn(pg, home, user=name))
            for i, name in enumerate(HOSTILE_NAMES):
                quoted = '"' + name.replace('"', '""') + '"'
                cur = conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {quoted}")
                assert cur.statusmessage == "CLEAN CONNECTION"
                terminated |= {f"{setting}-db-{i}", f"{setting}-db-proxied-{i}"}
                victims.assert_fate(terminated)
                cur = conn.execute(f"clean connection to all to user {quoted}")
                assert cur.statusmessage == "CLEAN CONNECTION"
                terminated.add(f"{setting}-role-{i}")
                victims.assert_fate(terminated)
        assert conn.execute("show standard_conforming_strings").fetchone() == ("off",)
        assert conn.execute("select v from t").fetchall() == [(1,)]
    assert snapshot_catalog(pg) == catalog


def test_hostile_names_in_errors_come_back_verbatim(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        for hostile in HOSTILE_NAMES:
            name = hostile + "_nope"
            quoted = '"' + name.replace('"', '""') + '"'
            with pytest.raises(psycopg.errors.InvalidCatalogName) as info:
                conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {quoted}")
            assert info.value.diag.message_primary == f'database "{name}" does not exist'
            with pytest.raises(psycopg.errors.UndefinedObject) as info:
                conn.execute(f"CLEAN CONNECTION TO ALL TO USER {quoted}")
            assert info.value.diag.message_primary == f'role "{name}" does not exist'


def test_latin1_client_encoding_names(
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    # "Ã¼" is, in LATIN1, the same two bytes as "ü" in UTF-8: the name must be kept as the
    # client's bytes in the client's encoding, never re-read as UTF-8.
    for name in ("ü", "Ã¼", "u"):
        make_db(name)
        victims.open(name, direct_dsn(pg, name))
    with proxy.connect() as conn:
        conn.execute("set client_encoding to 'LATIN1'")
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute(clean("ü")).statusmessage == "CLEAN CONNECTION"
        victims.assert_fate({"ü"})
        assert conn.execute(clean("Ã¼")).statusmessage == "CLEAN CONNECTION"
        victims.assert_fate({"ü", "Ã¼"})
        with pytest.raises(psycopg.errors.InvalidCatalogName) as info:
            conn.execute(clean("ünï_nope"))
        assert info.value.diag.message_primary == 'database "ünï_nope" does not exist'


@pytest.mark.parametrize(
    "prefix",
    [
        "select 'ü'; ",
        "select 'Ã¼'; ",
    ],
)
def test_latin1_syntax_error_position(prefix: str, proxy: ProxyProcess) -> None:
    query = prefix + "CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE d"
    with proxy.connect() as conn:
        conn.execute("set client_encoding to 'LATIN1'")
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == 'syntax error at or near "CHECK"'
        assert info.value.diag.statement_position == str(query.index("CHECK") + 1)


# --- where the victims come from ----------------------------------------------------------


def test_victims_through_other_proxy_direct_and_same_proxy(
    pg: PgServer,
    proxy: ProxyProcess,
    start_proxy: Callable[..., ProxyProcess],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    other = start_proxy()
    target, spared = make_db(), make_db()
    victims.open("same-proxy", proxy.dsn(target))
    victims.open("same-proxy-active", proxy.dsn(target), state="active")
    victims.open("other-proxy", other.dsn(target))
    victims.open("other-proxy-in-tx", other.dsn(target), state="idle in transaction")
    victims.open("direct", pg.dsn(target))
    victims.open("spared-same", proxy.dsn(spared))
    victims.open("spared-other", other.dsn(spared))
    victims.open("spared-direct", pg.dsn(spared))
    with proxy.connect() as conn:
        assert conn.execute(clean(target)).statusmessage == "CLEAN CONNECTION"
    victims.assert_fate(
        {"same-proxy", "same-proxy-active", "other-proxy", "other-proxy-in-tx", "direct"}
    )
    # and the other way round: cleaning through the second instance
    with other.connect() as conn:
        assert conn.execute(clean(spared)).statusmessage == "CLEAN CONNECTION"
    victims.assert_fate(
        {"same-proxy", "same-proxy-active", "other-proxy", "other-proxy-in-tx", "direct"}
        | {"spared-same", "spared-other", "spared-direct"}
    )
