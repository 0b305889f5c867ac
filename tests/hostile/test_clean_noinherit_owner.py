"""Ownership of the database means the owner's privileges, not bare membership.

PostgreSQL's ownership checks (``object_ownercheck``) require the *privileges* of the
owner role: a member that does not inherit them (a NOINHERIT role, or on PostgreSQL 16+
a grant ``WITH INHERIT FALSE``) is not an owner until it ``SET ROLE``s. CLEAN CONNECTION
... FOR DATABASE must refuse such a member with 42501 and terminate nothing, and still let
an inheriting member clean the owner's sessions.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims


def _grant(admin: psycopg.Connection, role: str, member: str, options: str = "") -> None:
    admin.execute(
        sql.SQL("GRANT {} TO {}" + options).format(sql.Identifier(role), sql.Identifier(member))
    )


def _clean(proxy: ProxyProcess, user: str, statement: str) -> list[tuple[str, str]]:
    """Run ``statement`` as ``user`` through ``proxy``; the notices it produced, or raise."""
    notices: list[tuple[str, str]] = []
    with psycopg.connect(proxy.dsn(user=user, password="pw"), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        assert conn.execute(statement).statusmessage == "CLEAN CONNECTION"
    return notices


def _refused(proxy: ProxyProcess, user: str, statement: str, db: str) -> None:
    with (
        psycopg.connect(proxy.dsn(user=user, password="pw"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as info,
    ):
        conn.execute(statement)
    assert info.value.diag.message_primary == f"must be owner of database {db}"


def test_member_without_the_owners_privileges_is_not_an_owner(
    proxy: ProxyProcess,
    pg: PgServer,
    admin: psycopg.Connection,
    victims: Victims,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    owner = make_role("cc_ni_owner")
    noinherit = make_role("cc_ni_member", "NOINHERIT")
    inherit = make_role("cc_ni_heir", "INHERIT")
    _grant(admin, owner, noinherit)
    _grant(admin, owner, inherit)
    refused = [noinherit]
    if pg.version >= 160000:
        # Since PostgreSQL 16 inheritance is a property of each grant.
        grant_only = make_role("cc_ni_grant", "INHERIT")
        _grant(admin, owner, grant_only, " WITH INHERIT FALSE")
        refused.append(grant_only)
    db = make_db(owner=owner)
    victims.open("owner_idle", pg.dsn(db, user=owner, password="pw"))
    victims.open("owner_busy", pg.dsn(db, user=owner, password="pw"), state="active")
    victims.open("superuser", pg.dsn(db))

    for member in refused:
        for statement in (
            f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}",
            f"CLEAN CONNECTION TO ALL FOR DATABASE {db} TO USER {owner}",
        ):
            _refused(proxy, member, statement, db)
    victims.assert_fate(set())

    notices = _clean(proxy, inherit, f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    assert notices == [
        ("WARNING", "permission denied to terminate 1 matching session(s); they were skipped")
    ]
    victims.assert_fate({"owner_idle", "owner_busy"})
