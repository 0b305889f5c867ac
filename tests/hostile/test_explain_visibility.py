"""EXPLAIN CLEAN CONNECTION must not show a caller more about other roles' sessions than
pg_stat_activity shows that caller: PostgreSQL hides client_addr, state and backend_start
of sessions a role has no pg_read_all_stats/membership right to (NULL there)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims

COLUMNS = ("client_addr", "state", "backend_start")


def test_explain_shows_no_more_than_pg_stat_activity(
    pg: PgServer,
    proxy: ProxyProcess,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    owner = make_role("vis_owner")
    stranger = make_role("vis_stranger")
    db = make_db(owner=owner)
    # the stranger's session comes through the proxy too: the proxy knows its real client
    theirs = victims.open("vis-theirs", proxy.dsn(db, user=stranger, password="pw"))
    with psycopg.connect(proxy.dsn(db, user=owner, password="pw"), autocommit=True) as conn:
        seen = conn.execute(
            "select client_addr::text, state, backend_start from pg_stat_activity where pid = %s",
            (theirs.pid,),
        ).fetchone()
        cur = conn.execute(f"EXPLAIN CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        names = [d.name for d in cur.description]
        rows = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    assert seen == (None, None, None)  # PostgreSQL hides them from the owner
    row = rows[theirs.pid]
    assert {name: row[name] for name in COLUMNS} == dict.fromkeys(COLUMNS), row
