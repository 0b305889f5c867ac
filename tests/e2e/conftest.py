"""Fixtures for the CLEAN CONNECTION end-to-end tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgServer
from tests.e2e.victims import Victims

_db_ids = itertools.count(1)


@pytest.fixture
def victims(admin: psycopg.Connection) -> Iterator[Victims]:
    group = Victims(admin)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def make_db(
    pg: PgServer, admin: psycopg.Connection, make_role: Callable[..., str]
) -> Iterator[Callable[..., str]]:
    """Factory: create a database (optionally with a given name and owner); dropped after.

    Depends on ``make_role`` so that roles owning databases outlive them at teardown.
    """
    created: list[str] = []

    def make(name: str | None = None, owner: str | None = None) -> str:
        name = name or f"cc_db_{next(_db_ids)}"
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        statement = sql.SQL("create database {}").format(sql.Identifier(name))
        if owner:
            statement += sql.SQL(" owner {}").format(sql.Identifier(owner))
        admin.execute(statement)
        created.append(name)
        return name

    yield make
    for name in created:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@pytest.fixture
def make_role(admin: psycopg.Connection) -> Iterator[Callable[..., str]]:
    """Factory: create a login role with password 'pw' (and given attributes); dropped after."""
    created: list[str] = []

    def make(name: str, *attributes: str) -> str:
        admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("create role {} login password 'pw' " + " ".join(attributes)).format(
                sql.Identifier(name)
            )
        )
        created.append(name)
        return name

    yield make
    for name in reversed(created):
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (name,)
        )
        admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
