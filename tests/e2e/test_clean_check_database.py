"""CLEAN CONNECTION ... CHECK FOR DATABASE d TO USER u checks the whole database (issue 9,
point 1), as openGauss's CountOtherDBBackends does: every role's sessions on ``d`` and its
prepared transactions block it, not only ``u``'s. So once CHECK passes, DROP DATABASE
succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess, proxy_in_front_of, wait_until
from tests.e2e.victims import Victims


@pytest.fixture(scope="module")
def cproxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """CHECK gives up after 0.5 s to keep the tests quick."""
    directory = tmp_path_factory.mktemp("check-db")
    with proxy_in_front_of(pg, directory, "--clean-check-timeout", "0.5") as running:
        yield running


def run(proxy: ProxyProcess, statement: str) -> str:
    with proxy.connect() as conn:
        return conn.execute(statement).statusmessage


def test_another_roles_session_blocks_check_until_it_leaves(
    pg: PgServer,
    cproxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    jack = make_role("cd_jack")
    other = make_role("cd_other")
    sales = make_db()
    victims.open("jack", pg.dsn(sales, user=jack, password="pw"))
    stranger = victims.open("stranger", pg.dsn(sales, user=other, password="pw"))
    for statement in (
        f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}",
        f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {sales} TO USER {jack}",
    ):
        with cproxy.connect() as conn:
            with pytest.raises(psycopg.errors.ObjectInUse) as info:
                conn.execute(statement)
            diag = info.value.diag
            assert diag.message_primary == f'database "{sales}" is being accessed by other users'
            assert diag.message_detail == "There are 2 other sessions using the database."
    victims.assert_fate(set())  # a failed CHECK terminates nothing

    stranger.conn.close()
    wait_until(lambda: stranger.pid not in victims.alive_pids(), 10, "the stranger to leave")
    del victims.all["stranger"]
    # jack's own session still blocks CHECK (the whole database is checked) ...
    with pytest.raises(psycopg.errors.ObjectInUse):
        run(cproxy, f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}")
    # ... and FORCE without CHECK removes it; then CHECK passes and the drop succeeds.
    assert run(cproxy, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {sales} TO USER {jack}") == (
        "CLEAN CONNECTION"
    )
    victims.assert_fate({"jack"})
    assert (
        run(cproxy, f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}")
        == "CLEAN CONNECTION"
    )
    assert run(cproxy, f"DROP DATABASE {sales}") == "DROP DATABASE"


def test_another_roles_prepared_transaction_blocks_check(
    pg: PgServer,
    cproxy: ProxyProcess,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    jack = make_role("cd_jack2")
    other = make_role("cd_other2")
    sales = make_db()
    with psycopg.connect(pg.dsn(sales, user=other, password="pw"), autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("prepare transaction 'cd_other_gid'")
    try:
        with cproxy.connect() as conn:
            with pytest.raises(psycopg.errors.ObjectInUse) as info:
                conn.execute(f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}")
            assert info.value.diag.message_detail == (
                "There is 1 prepared transaction using the database."
            )
            rows = conn.execute(
                f"EXPLAIN CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}"
            ).fetchall()
            assert rows == [
                (
                    None,
                    jack,
                    sales,
                    None,
                    None,
                    None,
                    None,
                    "check",
                    "fail: There is 1 prepared transaction using the database.",
                )
            ]
    finally:
        with psycopg.connect(pg.dsn(sales), autocommit=True) as conn:
            conn.execute("rollback prepared 'cd_other_gid'")
    assert (
        run(cproxy, f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales} TO USER {jack}")
        == "CLEAN CONNECTION"
    )


def test_user_only_check_still_counts_that_roles_sessions(
    pg: PgServer,
    cproxy: ProxyProcess,
    victims: Victims,
    make_role: Callable[..., str],
) -> None:
    jack = make_role("cd_jack3")
    victims.open("other-role", pg.dsn())  # another role's session does not block
    assert run(cproxy, f"CLEAN CONNECTION TO ALL CHECK TO USER {jack}") == "CLEAN CONNECTION"
    victims.open("jack", pg.dsn(user=jack, password="pw"))
    with cproxy.connect() as conn:
        with pytest.raises(psycopg.errors.ObjectInUse) as info:
            conn.execute(f"CLEAN CONNECTION TO ALL CHECK TO USER {jack}")
        assert info.value.diag.message_primary == f'role "{jack}" is being used by other users'
    victims.assert_fate(set())


def test_a_replication_connection_to_the_database_blocks_check_and_force_ends_it(
    pg: PgServer, cproxy: ProxyProcess, admin: psycopg.Connection, make_db: Callable[..., str]
) -> None:
    """A walsender of a ``replication=database`` connection makes DROP DATABASE fail, as
    any process of the database makes openGauss's CHECK fail (CountOtherDBBackends); and
    openGauss's FORCE signals every process of the database. So here too: CHECK counts it,
    EXPLAIN lists it, FORCE ends it, and then CHECK passes and DROP DATABASE succeeds."""
    sales = make_db()
    walsender = psycopg.connect(
        pg.dsn(sales, replication="database"), autocommit=True, application_name="cd-walsender"
    )
    pid = walsender.info.backend_pid
    kind = admin.execute("select backend_type from pg_stat_activity where pid = %s", (pid,))
    assert kind.fetchone() == ("walsender",)

    def alive() -> bool:
        admin.execute("select pg_stat_clear_snapshot()")
        found = admin.execute("select 1 from pg_stat_activity where pid = %s", (pid,))
        return found.fetchone() is not None

    try:
        check = f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {sales}"
        with cproxy.connect() as conn:
            with pytest.raises(psycopg.errors.ObjectInUse) as info:
                conn.execute(check)
            assert info.value.diag.message_detail == "There is 1 other session using the database."
            rows = conn.execute(
                f"EXPLAIN CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {sales}"
            ).fetchall()
            assert [(row[0], row[3], row[7], row[8]) for row in rows] == [
                (pid, "cd-walsender", "terminate", None),
                (None, None, "check", "fail: There is 1 other session using the database."),
            ]
            assert alive()
            forced = conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {sales}")
            assert forced.statusmessage == "CLEAN CONNECTION"
        wait_until(lambda: not alive(), 10, "the walsender to exit")
        assert run(cproxy, check) == "CLEAN CONNECTION"
        assert run(cproxy, f"DROP DATABASE {sales}") == "DROP DATABASE"
    finally:
        walsender.close()
