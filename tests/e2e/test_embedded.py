"""The embedded PostgreSQL manager: its data directory is used by one server at a time."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import EmbeddedPostgres, EmbeddedPostgresError

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("PROXY_TEST_DSN")), reason="uses its own embedded server"
)


def test_data_directory_is_reused_and_never_shared(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path / "data")
    first.start()
    try:
        with psycopg.connect(first.dsn(), autocommit=True) as conn:
            conn.execute("create table kept(a int)")
        with pytest.raises(EmbeddedPostgresError, match="already running"):
            EmbeddedPostgres(tmp_path / "data").start()
        first.stop()
        again = EmbeddedPostgres(tmp_path / "data")
        again.start()
        with psycopg.connect(again.dsn(), autocommit=True) as conn:
            assert conn.execute("select to_regclass('kept') is not null").fetchone() == (True,)
        again.stop()
    finally:
        first.destroy()
