"""JDBC (pgjdbc, extended protocol with named statements after prepareThreshold) through
the proxy. Runs where java and Debian's libpostgresql-jdbc-java are installed (.ci/run
installs the driver when it can)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims

PROGRAM = Path(__file__).parent / "jdbc" / "CleanJdbc.java"
DRIVER = Path("/usr/share/java/postgresql.jar")

pytestmark = pytest.mark.skipif(
    not shutil.which("java") or not DRIVER.exists(), reason="java or pgjdbc not installed"
)


def test_clean_connection_from_jdbc(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db
) -> None:
    db = make_db()
    victims.open("busy", pg.dsn(db), state="active")
    victims.open("through_proxy", proxy.dsn(db))
    url = f"jdbc:postgresql://{proxy.host}:{proxy.port}/postgres?user={pg.user}&sslmode=disable"
    result = subprocess.run(
        ["java", "-cp", str(DRIVER), str(PROGRAM), url, db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "execute rows=false count=0",
        "prepared x7 ok",
        'syntax 42601 ERROR: syntax error at or near "CHECK"',
        'missing 3D000 ERROR: database "no_such_db" does not exist',
        "in transaction 42",
    ]
    victims.assert_fate({"busy", "through_proxy"})
