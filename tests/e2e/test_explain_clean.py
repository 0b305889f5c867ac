"""EXPLAIN CLEAN CONNECTION end to end (issue 9): which sessions a statement would
terminate, skip or spare, and why, over every protocol path; and that it terminates nothing.

Victims are real sessions (direct to the server and through the proxy), in every state;
after each EXPLAIN every one of them must still answer. Errors must be the statement's own
(same SQLSTATE, same message, same order), not the query the proxy sends.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PgServer, ProxyProcess, proxy_in_front_of, wait_until
from tests.e2e.victims import Victim, Victims

COLUMNS = [
    ("pid", "int4"),
    ("usename", "name"),
    ("datname", "name"),
    ("application_name", "text"),
    ("client_addr", "text"),
    ("state", "text"),
    ("backend_start", "timestamptz"),
    ("action", "text"),
    ("reason", "text"),
]
PSQL = shutil.which("psql")
JDBC_PROGRAM = Path(__file__).parent / "jdbc" / "ExplainJdbc.java"
JDBC_DRIVER = Path("/usr/share/java/postgresql.jar")


@pytest.fixture(scope="module")
def eproxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with proxy_in_front_of(pg, tmp_path_factory.mktemp("eproxy")) as running:
        yield running


def fates(rows: list[tuple]) -> dict[int | None, tuple[str, str | None]]:
    """pid → (action, reason) of EXPLAIN's rows (the CHECK row under pid None)."""
    return {row[0]: (row[7], row[8]) for row in rows}


def explain(proxy: ProxyProcess, statement: str, **connect: object) -> list[tuple]:
    with proxy.connect(**connect) as conn:
        cur = conn.execute("EXPLAIN " + statement)
        assert cur.statusmessage == "EXPLAIN"
        assert [d.name for d in cur.description] == [name for name, _ in COLUMNS]
        return cur.fetchall()


def local_address(victim: Victim) -> str:
    """The victim's own end of its connection, as pg_stat_activity's client_addr shows it."""
    return local_address_of(victim.conn)


def local_address_of(conn: psycopg.Connection) -> str:
    sock = socket.socket(fileno=conn.fileno())
    try:
        host, port = sock.getsockname()[:2]
    finally:
        sock.detach()
    return f"{host}:{port}"


def test_rows_say_who_would_go_and_nothing_goes(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db, other = make_db(), make_db()
    idle = victims.open("idle", pg.dsn(db))
    proxied = victims.open("proxied", eproxy.dsn(db))
    busy = victims.open("busy", pg.dsn(db), state="active")
    in_tx = victims.open("in-tx", pg.dsn(db), state="idle in transaction")
    victims.open("innocent", pg.dsn(other))
    with eproxy.connect(dbname=db) as conn:
        me = conn.info.backend_pid
        rows = conn.execute(f"EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE {db}").fetchall()
        assert fates(rows) == {
            idle.pid: ("terminate", None),
            proxied.pid: ("terminate", None),
            busy.pid: ("spare", "in use"),
            in_tx.pid: ("spare", "in use"),
            me: ("spare", "caller"),
        }
        by_pid = {row[0]: row for row in rows}
        assert by_pid[idle.pid][1:6] == (
            pg.user,
            db,
            idle.conn.info.parameter_status("application_name"),
            local_address(idle),
            "idle",
        )
        # Through the proxy: the real client's address, not the proxy's.
        assert by_pid[proxied.pid][4] == local_address(proxied)
        assert by_pid[me][4] == local_address_of(conn)
        assert by_pid[busy.pid][5] == "active"
        assert by_pid[in_tx.pid][5] == "idle in transaction"
        forced = conn.execute(f"EXPLAIN CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        assert fates(forced.fetchall()) == {
            idle.pid: ("terminate", None),
            proxied.pid: ("terminate", None),
            busy.pid: ("terminate", None),
            in_tx.pid: ("terminate", None),
            me: ("spare", "caller"),
        }
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    victims.assert_fate(set())


def test_no_privilege_follows_postgresql_signalling_rule(
    pg: PgServer,
    admin: psycopg.Connection,
    eproxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    owner = make_role("ex_owner")
    stranger = make_role("ex_stranger")
    signaller = make_role("ex_signaller")
    admin.execute(f"grant pg_signal_backend to {signaller}")
    db = make_db(owner=owner)
    mine = victims.open("mine", pg.dsn(db, user=owner, password="pw"))
    theirs = victims.open("theirs", pg.dsn(db, user=stranger, password="pw"))
    superuser = victims.open("superuser", pg.dsn(db))
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    assert fates(explain(eproxy, statement, user=owner, password="pw")) == {
        mine.pid: ("terminate", None),
        theirs.pid: ("skip", "no privilege"),
        superuser.pid: ("skip", "no privilege"),
    }
    admin.execute(f"grant connect on database {db} to {signaller}")
    with psycopg.connect(eproxy.dsn(db, user=signaller, password="pw")) as conn:
        admin.execute(f"alter database {db} owner to {signaller}")
        rows = conn.execute("EXPLAIN " + statement).fetchall()
        assert fates(rows) == {
            mine.pid: ("terminate", None),  # pg_signal_backend: any non-superuser session
            theirs.pid: ("terminate", None),
            superuser.pid: ("skip", "no privilege"),
            conn.info.backend_pid: ("spare", "caller"),
        }
    victims.assert_fate(set())


def test_check_row_and_other_roles_sessions(
    pg: PgServer,
    eproxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    jack = make_role("ex_jack")
    other = make_role("ex_other")
    db = make_db()
    victims.open("jack", pg.dsn(db, user=jack, password="pw"))
    blocker = victims.open("other", pg.dsn(db, user=other, password="pw"))
    statement = f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {db} TO USER {jack}"
    rows = explain(eproxy, statement)
    assert rows[-1] == (
        None,
        jack,
        db,
        None,
        None,
        None,
        None,
        "check",
        "fail: There are 2 other sessions using the database.",
    )
    assert fates(rows[:-1]) == {
        victims.all["jack"].pid: ("terminate", None),
        blocker.pid: ("spare", "other user"),
    }
    role_only = f"CLEAN CONNECTION TO ALL CHECK TO USER {jack}"
    second = victims.open("jack2", pg.dsn(db, user=jack, password="pw"))
    rows = explain(eproxy, role_only)
    assert rows[-1] == (
        None,
        jack,
        None,
        None,
        None,
        None,
        None,
        "check",
        f'fail: role "{jack}" is being used by other users (2 other sessions)',
    )
    assert fates(rows[:-1]) == {
        victims.all["jack"].pid: ("terminate", None),
        second.pid: ("terminate", None),
    }
    victims.assert_fate(set())
    victims.close()
    assert fates(explain(eproxy, statement)) == {None: ("check", "pass")}
    assert explain(eproxy, role_only) == [
        (None, jack, None, None, None, None, None, "check", "pass")
    ]


# --- same validation as the statement -------------------------------------------------

ERRORS = [
    ("CLEAN CONNECTION TO ALL FORCE", "42601", "must define Database name or user name"),
    ("CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb", "3D000", 'database "ex_nodb" does not exist'),
    (
        "CLEAN CONNECTION TO NODE (n1) FOR DATABASE ex_nodb TO USER ex_nouser",
        "3D000",
        'database "ex_nodb" does not exist',
    ),
    (
        "CLEAN CONNECTION TO NODE (n1) FOR DATABASE postgres TO USER ex_nouser",
        "42704",
        'role "ex_nouser" does not exist',
    ),
    ("CLEAN CONNECTION TO NODE (dn1, dn2) FOR postgres", "42601", "Node dn1: object not defined"),
    ('CLEAN CONNECTION TO ALL TO USER "Ex ""Q"""', "42704", 'role "Ex "Q"" does not exist'),
    ('CLEAN CONNECTION TO ALL FOR "bäse:pgdp"', "3D000", 'database "bäse:pgdp" does not exist'),
]


@pytest.mark.parametrize(("statement", "sqlstate", "message"), ERRORS)
def test_errors_are_the_statements_own(
    eproxy: ProxyProcess, statement: str, sqlstate: str, message: str
) -> None:
    with eproxy.connect() as conn:
        for text in (statement, "EXPLAIN " + statement):
            for prepare in (False, True):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(text, prepare=prepare)
                diag = info.value.diag
                assert (diag.sqlstate, diag.message_primary) == (sqlstate, message), text
                assert diag.context is None and diag.message_detail is None
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_privilege_errors_are_the_statements_own(
    eproxy: ProxyProcess, make_db: Callable[..., str], make_role: Callable[..., str]
) -> None:
    nobody = make_role("ex_nobody")
    db = make_db()
    with eproxy.connect(user=nobody, password="pw") as conn:
        for statement, message in (
            (f"CLEAN CONNECTION TO ALL FOR DATABASE {db}", f"must be owner of database {db}"),
            (
                f"CLEAN CONNECTION TO ALL TO USER {nobody}",
                "must be system admin to clean pool connections",
            ),
        ):
            for text in (statement, "EXPLAIN " + statement):
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                    conn.execute(text)
                assert info.value.diag.message_primary == message


# --- protocol paths -------------------------------------------------------------------


def test_multi_statement_string(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    with eproxy.connect() as conn, conn.cursor() as cur:
        cur.execute(
            f"select 1; EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE {db}; "
            "EXPLAIN (costs off) select 'clean connection'; select 2"
        )
        results = []
        while True:
            results.append((cur.statusmessage, cur.fetchall()))
            if not cur.nextset():
                break
        assert results[0] == ("SELECT 1", [(1,)])
        assert results[1][0] == "EXPLAIN"
        assert fates(results[1][1]) == {idle.pid: ("terminate", None)}
        assert results[2] == ("EXPLAIN", [("Result",)])
        assert results[3] == ("SELECT 1", [(2,)])
        # An error in the EXPLAIN stops the string there, as any error does.
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            cur.execute(
                "create temp table t (); EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb;"
                " select 2"
            )
        assert conn.execute("select to_regclass('pg_temp.t')").fetchone() == (None,)
    victims.assert_fate(set())


def test_transaction_blocks_and_aborted_transaction(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    statement = f"EXPLAIN CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    with eproxy.connect(autocommit=False) as conn:
        assert fates(conn.execute(statement).fetchall()) == {idle.pid: ("terminate", None)}
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        for prepare in (False, True):
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute(statement, prepare=prepare)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            psycopg.ClientCursor(conn).execute(statement)  # simple query protocol
        conn.rollback()
        with psycopg.ClientCursor(conn) as cur:  # BEGIN ...; EXPLAIN ...; in one string
            cur.execute(f"select 1; {statement}; select 2")
            cur.nextset()
            assert cur.statusmessage == "EXPLAIN"
            assert fates(cur.fetchall()) == {idle.pid: ("terminate", None)}
        conn.rollback()
        assert fates(conn.execute(statement).fetchall()) == {idle.pid: ("terminate", None)}
        conn.commit()
    victims.assert_fate(set())


def test_psycopg_prepared_pipeline_and_binary(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    statement = f"EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE {db}"
    with eproxy.connect() as conn:
        for _ in range(3):  # psycopg prepares (Parse with a name) from the second run
            cur = conn.execute(statement, prepare=True)
            assert cur.statusmessage == "EXPLAIN"
            assert fates(cur.fetchall()) == {idle.pid: ("terminate", None)}
        with conn.cursor(binary=True) as cur:
            cur.execute(statement)
            assert fates(cur.fetchall()) == {idle.pid: ("terminate", None)}
        with conn.pipeline():
            cursors = [
                conn.execute("select %s::int", (1,)),
                conn.execute(statement),
                conn.execute(statement, prepare=True),
                conn.execute("select 'two'"),
            ]
        assert cursors[0].fetchall() == [(1,)]
        for cur in cursors[1:3]:
            assert cur.statusmessage == "EXPLAIN"
            assert fates(cur.fetchall()) == {idle.pid: ("terminate", None)}
        assert cursors[3].fetchall() == [("two",)]
        with pytest.raises(psycopg.errors.InvalidCatalogName), conn.pipeline():
            conn.execute("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb")
            conn.execute(statement)
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    victims.assert_fate(set())


def test_asyncpg_describe_and_errors(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    statement = f"EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE {db}"

    async def scenario() -> None:
        conn = await asyncpg.connect(
            host=eproxy.host, port=eproxy.port, user=pg.user, database="postgres", ssl=False
        )
        try:
            stmt = await conn.prepare(statement)
            assert [(a.name, a.type.name) for a in stmt.get_attributes()] == COLUMNS
            for _ in range(2):
                rows = await stmt.fetch()
                assert [(r["pid"], r["action"], r["reason"]) for r in rows] == [
                    (idle.pid, "terminate", None)
                ]
                assert stmt.get_statusmsg() == "EXPLAIN"
            assert len(await conn.fetch(statement)) == 1
            with pytest.raises(asyncpg.InvalidCatalogNameError) as info:
                await conn.fetch("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb")
            assert str(info.value) == 'database "ex_nodb" does not exist'
            assert await conn.fetchval("select $1::int + 1", 41) == 42
        finally:
            await conn.close()

    asyncio.run(scenario())
    victims.assert_fate(set())


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_psql(pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    dsn = make_conninfo(host=eproxy.host, port=eproxy.port, dbname="postgres", user=pg.user)
    result = subprocess.run(
        [PSQL, "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-d", dsn],
        input=f"EXPLAIN CLEAN CONNECTION TO ALL CHECK FOR DATABASE {db};\n"
        "EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb;\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{idle.pid}|{pg.user}|{db}|")
    fields = lines[0].split("|")
    assert fields[5] == "idle" and fields[6] and fields[7:] == ["terminate", ""]
    assert lines[1] == f"||{db}|||||check|fail: There is 1 other session using the database."
    assert result.stderr == 'ERROR:  database "ex_nodb" does not exist\n'
    victims.assert_fate(set())


@pytest.mark.skipif(
    not shutil.which("java") or not JDBC_DRIVER.exists(), reason="java or pgjdbc not installed"
)
def test_jdbc_prepared_statement_metadata(
    pg: PgServer, eproxy: ProxyProcess, victims: Victims, make_db: Callable[..., str]
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    url = f"jdbc:postgresql://{eproxy.host}:{eproxy.port}/postgres?user={pg.user}&sslmode=disable"
    result = subprocess.run(
        ["java", "-cp", str(JDBC_DRIVER), str(JDBC_PROGRAM), url, db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "columns " + ",".join(f"{name}:{kind}" for name, kind in COLUMNS)
    assert lines[1:8] == [f"row {idle.pid} terminate null"] * 7
    assert lines[8:] == ['missing 3D000 ERROR: database "ex_nodb" does not exist']
    victims.assert_fate(set())


# --- anything else passes through ------------------------------------------------------


OTHER_EXPLAINS = [
    "EXPLAIN (costs off) select 'clean connection' as x /* CLEAN CONNECTION */",
    "explain select 1",
    "EXPLAIN (ANALYZE, costs off, timing off, summary off) select 1",
    "explain analyze verbose select g from generate_series(1, 3) g -- clean connection",
    "explain (format json, costs off) select 1",
]


def test_other_explains_and_options_are_the_servers(eproxy: ProxyProcess, pg: PgServer) -> None:
    with eproxy.connect() as via, pg.connect() as direct:
        for query in OTHER_EXPLAINS:
            for prepare in (False, True):
                got = via.execute(query, prepare=prepare)
                want = direct.execute(query, prepare=prepare)
                assert got.statusmessage == want.statusmessage == "EXPLAIN"
                assert [d.name for d in got.description] == [d.name for d in want.description]
                if "analyze" in query.lower() and "timing off" not in query:
                    assert len(got.fetchall()) == len(want.fetchall())  # times differ
                else:
                    assert got.fetchall() == want.fetchall(), query
        # EXPLAIN with options is PostgreSQL's: CLEAN is not an explainable statement.
        for text in (
            "EXPLAIN ANALYZE CLEAN CONNECTION TO ALL FOR DATABASE postgres",
            "EXPLAIN (costs off) CLEAN CONNECTION TO ALL FOR DATABASE postgres",
        ):
            with pytest.raises(psycopg.errors.SyntaxError) as info:
                via.execute(text)
            assert info.value.diag.message_primary == 'syntax error at or near "CLEAN"'
            assert info.value.diag.statement_position == str(text.index("CLEAN") + 1)


def test_invalid_explain_clean_reports_the_grammar_error(eproxy: ProxyProcess) -> None:
    query = "select 1; EXPLAIN CLEAN CONNECTION TO ALL CHECK CHECK FOR DATABASE d"
    with eproxy.connect() as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(query)
        assert info.value.diag.message_primary == 'syntax error at or near "CHECK"'
        assert info.value.diag.statement_position == str(query.rindex("CHECK") + 1)


def test_client_addresses_from_every_worker(
    pg: PgServer, victims: Victims, make_db: Callable[..., str], tmp_path: Path
) -> None:
    db = make_db()
    with proxy_in_front_of(pg, tmp_path, "--workers", "2") as proxy:
        proxied = [victims.open(f"p{i}", proxy.dsn(db)) for i in range(6)]
        for _ in range(3):  # from connections that land on either worker
            rows = explain(proxy, f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
            assert {row[0]: row[4] for row in rows} == {
                victim.pid: local_address(victim) for victim in proxied
            }
        victims.assert_fate(set())


def test_without_force_none_spares_and_terminates_nothing(
    pg: PgServer, victims: Victims, make_db: Callable[..., str], tmp_path: Path
) -> None:
    db = make_db()
    idle = victims.open("idle", pg.dsn(db))
    with proxy_in_front_of(pg, tmp_path, "--clean-without-force", "none") as proxy:
        statement = f"CLEAN CONNECTION TO ALL FOR DATABASE {db}"
        assert fates(explain(proxy, statement)) == {idle.pid: ("spare", "without force")}
        with proxy.connect() as conn:
            assert conn.execute(statement).statusmessage == "CLEAN CONNECTION"
        victims.assert_fate(set())
        forced = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
        assert fates(explain(proxy, forced)) == {idle.pid: ("terminate", None)}
        with proxy.connect() as conn:
            conn.execute(forced)
    victims.assert_fate({"idle"})


def test_opengauss_names(
    pg: PgServer,
    eproxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    """``#`` in a name and words openGauss does not reserve (isnull, lateral, system_user)
    name the sessions EXPLAIN lists, and nothing is terminated."""
    hashed, isnull = make_db("sales#2024"), make_db("isnull")
    lateral, system_user = make_role("lateral"), make_role("system_user")
    on_hashed = victims.open("hashed", pg.dsn(hashed))
    on_isnull = victims.open("isnull", pg.dsn(isnull))
    as_lateral = victims.open("lateral", pg.dsn(user=lateral, password="pw"))
    as_system_user = victims.open("system_user", pg.dsn(user=system_user, password="pw"))
    victims.open("innocent", pg.dsn())
    for statement, pid in (
        ("CLEAN CONNECTION TO ALL FORCE FOR DATABASE sales#2024", on_hashed.pid),
        ("clean connection to all force for isnull", on_isnull.pid),
        ("CLEAN CONNECTION TO ALL FORCE TO USER lateral", as_lateral.pid),
        ("CLEAN CONNECTION TO ALL FORCE TO system_user", as_system_user.pid),
    ):
        assert fates(explain(eproxy, statement)) == {pid: ("terminate", None)}, statement
    victims.assert_fate(set())


def test_without_force_none_still_checks(
    pg: PgServer,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
    tmp_path: Path,
) -> None:
    """--clean-without-force none: CHECK still checks (55006 while a session is there, of
    any role), EXPLAIN says so, and nothing is terminated either way."""
    jack = make_role("ex_none_jack")
    db = make_db()
    other = victims.open("other", pg.dsn(db))
    args = ("--clean-without-force", "none", "--clean-check-timeout", "0.3")
    with proxy_in_front_of(pg, tmp_path, *args) as proxy:
        statement = f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {db} TO USER {jack}"
        rows = explain(proxy, statement)
        assert rows[-1][7:] == ("check", "fail: There is 1 other session using the database.")
        assert fates(rows[:-1]) == {other.pid: ("spare", "other user")}
        with proxy.connect() as conn:
            with pytest.raises(psycopg.errors.ObjectInUse) as info:
                conn.execute(statement)
            assert info.value.diag.message_detail == (
                "There is 1 other session using the database."
            )
        victims.assert_fate(set())
        mine = victims.open("jack", pg.dsn(db, user=jack, password="pw"))
        other.conn.close()
        wait_until(lambda: other.pid not in victims.alive_pids(), 10, "the other to leave")
        del victims.all["other"]
        # jack's own session is on the database: CHECK fails, and is the only blocker
        with proxy.connect() as conn, pytest.raises(psycopg.errors.ObjectInUse):
            conn.execute(statement)
        unchecked = f"CLEAN CONNECTION TO ALL FOR DATABASE {db} TO USER {jack}"
        assert fates(explain(proxy, unchecked)) == {mine.pid: ("spare", "without force")}
        with proxy.connect() as conn:
            assert conn.execute(unchecked).statusmessage == "CLEAN CONNECTION"
        victims.assert_fate(set())
        mine.conn.close()
        wait_until(lambda: mine.pid not in victims.alive_pids(), 10, "jack to leave")
        del victims.all["jack"]
        with proxy.connect() as conn:
            assert conn.execute(statement).statusmessage == "CLEAN CONNECTION"
        assert fates(explain(proxy, statement)) == {None: ("check", "pass")}
