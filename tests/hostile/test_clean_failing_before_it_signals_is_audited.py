"""A CLEAN CONNECTION that fails before it signals anything (missing database, not the
database's owner, an aborted transaction) and whether it is audited: the first two ran
(their error comes from inside the program, with its CONTEXT) and get one ``error``
record each, without the program's CONTEXT reaching the client; the last never ran (the
server refused it before the DO block) and gets none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ProxyProcess, wait_until


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


@pytest.fixture
def audited(start_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> tuple[ProxyProcess, Path]:
    audit = tmp_path / "audit.jsonl"
    return start_proxy("--audit-log", str(audit)), audit


def test_validation_failures_are_audited_once_and_aborted_transactions_not(
    audited: tuple[ProxyProcess, Path],
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> None:
    proxy, audit = audited
    db = make_db()
    role = make_role("clean_not_owner")
    with psycopg.connect(proxy.dsn(user=role, password="pw"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as denied:
            conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
        assert denied.value.sqlstate == "42501"
        assert not denied.value.diag.context, denied.value.diag.context
        with pytest.raises(psycopg.Error) as missing:
            conn.execute("CLEAN CONNECTION TO ALL FOR DATABASE no_such_db_for_clean")
        assert missing.value.sqlstate == "3D000"
    with psycopg.connect(proxy.dsn(), autocommit=False) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.Error) as aborted:
            conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
        assert aborted.value.sqlstate == "25P02"
        conn.rollback()
        conn.execute("SELECT 1")  # a later round trip: anything due is written
    found = wait_until(lambda: len(records(audit)) >= 2 and records(audit), 10, "two records")
    assert [(r["result"], r["sqlstate"]) for r in found] == [
        ("error", "42501"),
        ("error", "3D000"),
    ], found
