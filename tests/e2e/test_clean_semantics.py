"""CLEAN CONNECTION semantics (the table in README.md, "CLEAN CONNECTION"), row by row, with real victim sessions.

The cleaning session goes through a proxy; victims are direct, through the same proxy and
through a second proxy instance. After each statement the test checks exactly which
victims are gone from pg_stat_activity and fail their next query, and that every innocent
session still answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgServer, ProxyProcess, proxy_in_front_of, wait_until
from tests.e2e.victims import Victims


@pytest.fixture(scope="module")
def cproxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The proxy the cleaning sessions use; CHECK gives up after 0.5 s to keep tests quick."""
    directory = tmp_path_factory.mktemp("cproxy")
    with proxy_in_front_of(pg, directory, "--clean-check-timeout", "0.5") as running:
        yield running


@pytest.fixture(scope="module")
def other_proxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A second, independent proxy instance in front of the same server."""
    with proxy_in_front_of(pg, tmp_path_factory.mktemp("other")) as running:
        yield running


@dataclass(frozen=True)
class Notice:
    severity: str | None
    message_primary: str | None
    context: str | None


def clean(proxy: ProxyProcess, statement: str, user: str | None = None, password: str = "pw"):
    """Run ``statement`` through ``proxy``; return (status message, notices) or raise."""
    dsn = proxy.dsn(user=user, password=password) if user else proxy.dsn()
    notices: list[Notice] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: notices.append(Notice(d.severity, d.message_primary, d.context))
        )
        cur = conn.execute(statement)
        assert cur.description is None  # no rows, no RowDescription
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        return cur.statusmessage, notices


def expect_error(
    proxy: ProxyProcess, statement: str, sqlstate: str, message: str, **kw
) -> psycopg.Error:
    user = kw.pop("user", None)
    dsn = proxy.dsn(user=user, password="pw") if user else proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statement)
        error = info.value
        assert error.sqlstate == sqlstate, error
        assert error.diag.message_primary == message
        assert error.diag.context is None  # no PL/pgSQL CONTEXT leaks out
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        return error


# --- validation, in openGauss's order -------------------------------------------------


def test_neither_database_nor_user(cproxy: ProxyProcess, victims: Victims, pg: PgServer) -> None:
    victims.open("a", pg.dsn())
    expect_error(
        cproxy, "CLEAN CONNECTION TO ALL FORCE", "42601", "must define Database name or user name"
    )
    victims.assert_fate(set())


def test_database_does_not_exist(cproxy: ProxyProcess) -> None:
    expect_error(
        cproxy,
        "CLEAN CONNECTION TO ALL FOR DATABASE nosuchdb",
        "3D000",
        'database "nosuchdb" does not exist',
    )


def test_database_checked_before_user_and_nodes(cproxy: ProxyProcess) -> None:
    expect_error(
        cproxy,
        "CLEAN CONNECTION TO NODE (n1) FOR DATABASE nosuchdb TO USER nosuchuser",
        "3D000",
        'database "nosuchdb" does not exist',
    )
    expect_error(
        cproxy,
        "CLEAN CONNECTION TO NODE (n1) FOR DATABASE postgres TO USER nosuchuser",
        "42704",
        'role "nosuchuser" does not exist',
    )


def test_node_and_coordinator_lists(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db = make_db()
    victims.open("v", pg.dsn(db))
    expect_error(
        cproxy,
        f"CLEAN CONNECTION TO NODE (dn1, dn2) FOR DATABASE {db}",
        "42601",
        "Node dn1: object not defined",
    )
    expect_error(
        cproxy,
        f"CLEAN CONNECTION TO COORDINATOR (cn_5001) FOR DATABASE {db}",
        "42601",
        "Node cn_5001: object not defined",
    )
    victims.assert_fate(set())


def test_not_owner_of_database(cproxy: ProxyProcess, make_db, make_role) -> None:
    make_role("cc_plain")
    db = make_db()
    expect_error(
        cproxy,
        f"CLEAN CONNECTION TO ALL FOR DATABASE {db}",
        "42501",
        f"must be owner of database {db}",
        user="cc_plain",
    )


def test_no_database_needs_superuser(cproxy: ProxyProcess, make_role) -> None:
    make_role("cc_plain2")
    expect_error(
        cproxy,
        "CLEAN CONNECTION TO ALL FORCE TO USER cc_plain2",
        "42501",
        "must be system admin to clean pool connections",
        user="cc_plain2",
    )


def test_user_does_not_exist(cproxy: ProxyProcess) -> None:
    expect_error(
        cproxy,
        "CLEAN CONNECTION TO ALL TO USER nobody_here",
        "42704",
        'role "nobody_here" does not exist',
    )


# --- CHECK ----------------------------------------------------------------------------


def test_check_with_one_other_session(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db = make_db()
    victims.open("v", pg.dsn(db))
    error = expect_error(
        cproxy,
        f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {db}",
        "55006",
        f'database "{db}" is being accessed by other users',
    )
    assert error.diag.message_detail == "There is 1 other session using the database."
    victims.assert_fate(set())


def test_check_with_several_sessions_and_prepared_transaction(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer, admin: psycopg.Connection
) -> None:
    db = make_db()
    victims.open("v1", pg.dsn(db))
    victims.open("v2", cproxy.dsn(db))
    with psycopg.connect(pg.dsn(db), autocommit=True) as conn:
        for step in ("begin", "create table t(a int)", "prepare transaction 'cc_gid'"):
            conn.execute(step)
    try:
        error = expect_error(
            cproxy,
            f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {db}",
            "55006",
            f'database "{db}" is being accessed by other users',
        )
        assert error.diag.message_detail == (
            "There are 2 other session(s) and 1 prepared transaction(s) using the database."
        )
        victims.assert_fate(set())
        pids = {victim.pid for victim in victims.all.values()}
        victims.close()
        wait_until(lambda: not victims.alive_pids() & pids, 10, "victims to leave")
        error = expect_error(
            cproxy,
            f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {db}",
            "55006",
            f'database "{db}" is being accessed by other users',
        )
        assert error.diag.message_detail == "There is 1 prepared transaction using the database."
    finally:
        with psycopg.connect(pg.dsn(db), autocommit=True) as conn:
            conn.execute("rollback prepared 'cc_gid'")


def test_check_passes_then_force_cleans(cproxy: ProxyProcess, make_db) -> None:
    db = make_db()
    tag, notices = clean(cproxy, f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {db}")
    assert tag == "CLEAN CONNECTION" and notices == []


def test_check_user_only(cproxy: ProxyProcess, victims: Victims, make_role, pg: PgServer) -> None:
    role = make_role("cc_checked")
    victims.open("v", pg.dsn(user=role, password="pw"))
    expect_error(
        cproxy,
        f"CLEAN CONNECTION TO ALL CHECK TO USER {role}",
        "55006",
        f'role "{role}" is being used by other users',
    )
    victims.assert_fate(set())


# --- the action -----------------------------------------------------------------------


def test_force_terminates_every_matching_session_but_the_callers(
    cproxy: ProxyProcess, other_proxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db, other = make_db(), make_db()
    victims.open("direct_idle", pg.dsn(db))
    victims.open("proxy_active", cproxy.dsn(db), state="active")
    victims.open("other_proxy_in_tx", other_proxy.dsn(db), state="idle in transaction")
    victims.open("other_db", pg.dsn(other))
    with psycopg.connect(cproxy.dsn(db), autocommit=True) as caller:
        assert (
            caller.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}").statusmessage
            == "CLEAN CONNECTION"
        )
        assert caller.execute("select current_database()").fetchone() == (db,)  # not itself
    victims.assert_fate({"direct_idle", "proxy_active", "other_proxy_in_tx"})


def test_without_force_only_idle_sessions_go(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db = make_db()
    victims.open("idle_direct", pg.dsn(db))
    victims.open("idle_proxy", cproxy.dsn(db))
    victims.open("active", pg.dsn(db), state="active")
    victims.open("in_tx", pg.dsn(db), state="idle in transaction")
    tag, _ = clean(cproxy, f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
    assert tag == "CLEAN CONNECTION"
    victims.assert_fate({"idle_direct", "idle_proxy"})


def test_force_then_drop_database_in_one_psql_script(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer, tmp_path: Path
) -> None:
    import shutil
    import subprocess

    if not shutil.which("psql"):
        pytest.skip("psql not installed")
    db = make_db()
    victims.open("busy", pg.dsn(db), state="active")
    victims.open("idle", cproxy.dsn(db))
    script = tmp_path / "drop.sql"
    script.write_text(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db};\nDROP DATABASE {db};\n")
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            cproxy.host,
            "-p",
            str(cproxy.port),
            "-U",
            pg.user,
            "-d",
            "postgres",
            "-f",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["CLEAN CONNECTION", "DROP DATABASE"]
    assert result.stderr == ""
    victims.assert_fate({"busy", "idle"})


def test_database_and_user_must_both_match(
    cproxy: ProxyProcess, victims: Victims, make_db, make_role, pg: PgServer
) -> None:
    db, other = make_db(), make_db()
    role = make_role("cc_target")
    make_role("cc_bystander")
    victims.open("match", pg.dsn(db, user=role, password="pw"))
    victims.open("same_db_other_user", pg.dsn(db, user="cc_bystander", password="pw"))
    victims.open("same_user_other_db", pg.dsn(other, user=role, password="pw"))
    clean(cproxy, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db} TO USER {role}")
    victims.assert_fate({"match"})


def test_user_only_cleans_that_role_everywhere(
    cproxy: ProxyProcess, victims: Victims, make_db, make_role, pg: PgServer
) -> None:
    db, other = make_db(), make_db()
    role = make_role("cc_everywhere")
    victims.open("in_db", pg.dsn(db, user=role, password="pw"))
    victims.open("in_other", cproxy.dsn(other, user=role, password="pw"), state="active")
    victims.open("someone_else", pg.dsn(db))
    clean(cproxy, f"CLEAN CONNECTION TO ALL FORCE TO USER {role}")
    victims.assert_fate({"in_db", "in_other"})


def test_quoting_and_case_folding(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    mixed = make_db("Mixed Db")
    folded = make_db("db2")
    victims.open("mixed", pg.dsn(mixed))
    victims.open("folded", pg.dsn(folded))
    clean(cproxy, 'clean connection to all force for database "Mixed Db"')
    victims.assert_fate({"mixed"})
    clean(cproxy, "CLEAN CONNECTION TO ALL FORCE FOR DATABASE DB2")
    victims.assert_fate({"mixed", "folded"})
    expect_error(
        cproxy,
        'CLEAN CONNECTION TO ALL FOR DATABASE "DB2"',
        "3D000",
        'database "DB2" does not exist',
    )


# --- privileges: the caller's, never more ----------------------------------------------


def test_database_owner_cleans_own_sessions_and_skips_others(
    cproxy: ProxyProcess, victims: Victims, make_db, make_role, pg: PgServer
) -> None:
    owner = make_role("cc_owner")
    make_role("cc_stranger")
    db = make_db(owner=owner)
    victims.open("owner_session", pg.dsn(db, user=owner, password="pw"))
    victims.open("stranger_session", pg.dsn(db, user="cc_stranger", password="pw"))
    victims.open("superuser_session", pg.dsn(db))
    tag, notices = clean(cproxy, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}", user=owner)
    assert tag == "CLEAN CONNECTION"
    warnings = [n for n in notices if n.severity == "WARNING"]
    assert len(warnings) == 1 and "2" in warnings[0].message_primary, [
        n.message_primary for n in notices
    ]
    assert warnings[0].context is None
    victims.assert_fate({"owner_session"})


def test_pg_signal_backend_member_may_terminate_non_superusers(
    cproxy: ProxyProcess,
    victims: Victims,
    make_db,
    make_role,
    pg: PgServer,
    admin: psycopg.Connection,
) -> None:
    owner = make_role("cc_signaller")
    admin.execute(sql.SQL("grant pg_signal_backend to {}").format(sql.Identifier(owner)))
    make_role("cc_other")
    db = make_db(owner=owner)
    victims.open("other", pg.dsn(db, user="cc_other", password="pw"))
    victims.open("superuser", pg.dsn(db))
    _, notices = clean(cproxy, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}", user=owner)
    assert [n.severity for n in notices] == ["WARNING"]
    victims.assert_fate({"other"})


# --- transactions -----------------------------------------------------------------------


def test_in_transaction_block_not_undone_by_rollback(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db = make_db()
    victims.open("v", pg.dsn(db))
    with psycopg.connect(cproxy.dsn(), autocommit=False) as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        conn.rollback()
    victims.assert_fate({"v"})


def test_in_aborted_transaction_is_25P02(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer
) -> None:
    db = make_db()
    victims.open("v", pg.dsn(db))
    with psycopg.connect(cproxy.dsn(), autocommit=False) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)
    victims.assert_fate(set())


# --- scale and audit ----------------------------------------------------------------------


async def test_terminating_150_sessions_at_once(
    cproxy: ProxyProcess, make_db, pg: PgServer, admin: psycopg.Connection
) -> None:
    db = make_db()
    others = [
        await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, database=db)
        for _ in range(75)
    ] + [
        await asyncpg.connect(host=cproxy.host, port=cproxy.port, user=pg.user, database=db)
        for _ in range(75)
    ]
    innocent = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, database="postgres")
    try:
        caller = await asyncpg.connect(
            host=cproxy.host, port=cproxy.port, user=pg.user, database="postgres"
        )
        status = await caller.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        assert status == "CLEAN CONNECTION"
        await caller.close()
        # FORCE waits until they have gone: nothing is left on the database right away.
        count = admin.execute(
            "select count(*) from pg_stat_activity where datname = %s", (db,)
        ).fetchone()[0]
        assert count == 0
        results = await asyncio.gather(
            *(c.fetchval("select 1") for c in others), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results)
        assert await innocent.fetchval("select 'alive'") == "alive"
    finally:
        for conn in [*others, innocent]:
            conn.terminate()


def test_audit_log_line(cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer) -> None:
    db = make_db()
    victims.open("v", pg.dsn(db))
    clean(cproxy, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    victims.assert_fate({"v"})
    line = wait_until(
        lambda: next((x for x in cproxy.log().splitlines() if "pgdp.audit" in x and db in x), None),
        5,
        "the audit line",
    )
    assert "result=ok terminated=1 skipped=0 remaining=0" in line
    assert "statement='CLEAN CONNECTION TO ALL FORCE FOR DATABASE" in line
    assert "pw" not in line.split("statement=")[0]


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "LATIN1"])
def test_names_in_the_sessions_client_encoding(
    cproxy: ProxyProcess, victims: Victims, make_db, pg: PgServer, encoding: str
) -> None:
    """Multibyte encodings whose trail bytes look like ASCII (表 is 0x95 0x5C in SJIS: a
    backslash) are decoded with the session's client_encoding, never misread."""
    name = {"SJIS": "表示db", "BIG5": "許功蓋", "LATIN1": "Ünïcödé"}[encoding]
    db = make_db(name)
    bystander = make_db()
    victims.open("target", pg.dsn(db))
    victims.open("bystander", pg.dsn(bystander))
    with psycopg.connect(cproxy.dsn(), autocommit=True) as conn:
        conn.execute(f"set client_encoding to '{encoding}'")
        statement = f'select 1; CLEAN CONNECTION TO ALL FORCE FOR DATABASE "{name}"'
        cur = conn.execute(statement)
        assert (
            cur.statusmessage == "SELECT 1"
            and cur.nextset()
            and cur.statusmessage == "CLEAN CONNECTION"
        )
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            conn.execute(
                f"select '{name}'; CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE \"{name}\""
            )
        assert info.value.diag.message_primary == 'syntax error at or near "CHECK"'
        assert info.value.diag.statement_position == str(
            len(f"select '{name}'; CLEAN CONNECTION TO ALL FORCE ") + 1
        )
    victims.assert_fate({"target"})
