"""``--log-format json`` and the CLEAN CONNECTION audit record (``--audit-log``), end to
end: real clients, a real CLEAN, the log file read line by line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, wait_until
from tests.e2e.victims import Victims
from tests.rawpg import handshake, query_message


def _json_lines(text: str) -> list[dict]:
    """Every line of ``text`` parsed as one JSON object (fails on any other line)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_json_logs_parse_line_by_line(start_proxy, pg: PgServer) -> None:
    proxy = start_proxy("--log-format", "json")
    hostile_app = 'app\n{"level": "error"} x="y"\u2028'
    with proxy.connect(application_name=hostile_app) as conn:
        conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        proxy.connect(dbname="no_such_database_x")
    wait_until(lambda: proxy.log().count('"event": "closed"') >= 2, 10, "two closed records")
    records = _json_lines(proxy.log())
    for record in records:
        assert {"time", "level", "logger", "event", "message"} <= record.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    opened = [r for r in records if r["event"] == "opened"]
    assert opened[0]["user"] == pg.user and opened[0]["db"] == "postgres"
    assert opened[0]["app"] == hostile_app  # the client's text, whole, in one field
    assert opened[0]["client"].startswith("127.0.0.1:")
    assert int(opened[0]["conn"]) >= 1
    closed = [r for r in records if r["event"] == "closed"]
    assert {"duration", "bytes_in", "bytes_out"} <= closed[0].keys()
    assert any(r["event"] == "listening on" for r in records)
    # Events name what happened, never the numbers or addresses of one occurrence.
    assert not any(ch.isdigit() for r in records for ch in r["event"])
    assert all(r["level"] != "error" for r in records)


def test_audit_record_names_every_victim(
    start_proxy, pg: PgServer, make_db, make_role, victims: Victims, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    proxy = start_proxy("--log-format", "json", "--audit-log", str(audit_file))
    db = make_db()
    owner = make_role("audit_owner", "createdb")
    with pg.connect() as admin:
        admin.execute(f"alter database {db} owner to audit_owner")
    proxied_victim = victims.open("proxied", proxy.dsn(db, user=owner, password="pw"))
    with socket.socket(fileno=os.dup(proxied_victim.conn.pgconn.socket)) as sock:
        host, port = sock.getsockname()[:2]  # the victim's end: what the proxy saw
    victims.open("direct", pg.dsn(db, user=owner, password="pw"))
    victims.open("busy", pg.dsn(db, user=owner, password="pw"), state="active")
    victims.open("superuser", pg.dsn(db))  # the owner may not signal it: skipped
    pids = {name: victim.pid for name, victim in victims.all.items()}
    with psycopg.connect(
        proxy.dsn(user=owner, password="pw"), autocommit=True, application_name="cleaner"
    ) as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    victims.assert_fate({"proxied", "direct", "busy"})

    wait_until(audit_file.exists, 10, "the audit file")
    (record,) = _json_lines(audit_file.read_text())
    assert record["event"] == "clean_connection"
    assert record["result"] == "ok" and record["sqlstate"] == ""
    assert record["user"] == owner and record["db"] == "postgres" and record["app"] == "cleaner"
    assert record["client"].startswith("127.0.0.1:")
    assert record["statement"] == f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    assert (record["terminated"], record["skipped"], record["remaining"]) == (3, 1, 0)
    assert record["duration"] >= 0
    by_pid = {entry["pid"]: entry for entry in record["sessions"]}
    assert set(by_pid) == set(pids.values())
    for name in ("proxied", "direct", "busy"):
        entry = by_pid[pids[name]]
        assert entry["outcome"] == "terminated"
        assert entry["database"] == db
        assert entry["role"] == owner
        assert entry["application_name"].startswith(f"victim-{name}-")
        assert entry["client_addr"] == "127.0.0.1" and entry["client_port"] > 0
        assert entry["backend_start"]
    assert by_pid[pids["busy"]]["state"] == "active"
    assert by_pid[pids["direct"]]["state"] == "idle"
    skipped = by_pid[pids["superuser"]]
    assert skipped["outcome"] == "skipped" and skipped["role"] == pg.user
    # The session that came through the proxy: the real client the proxy saw.
    proxied = by_pid[pids["proxied"]]
    assert proxied["real_client"] == f"{host}:{port}"
    assert proxied["client_addr"] == "127.0.0.1"  # pg_stat_activity: the proxy's address
    assert "real_client" not in by_pid[pids["direct"]]

    # The same record in the log: JSON fields, and a failing CLEAN is audited too.
    with proxy.connect() as conn, pytest.raises(psycopg.errors.InvalidCatalogName):
        conn.execute("CLEAN CONNECTION TO ALL FORCE FOR DATABASE no_such_database_x")
    wait_until(lambda: len(audit_file.read_text().splitlines()) == 2, 10, "the second record")
    failed = _json_lines(audit_file.read_text())[1]
    assert failed["result"] == "error" and failed["sqlstate"] == "3D000"
    assert failed["error"] == 'database "no_such_database_x" does not exist'
    logged = [r for r in _json_lines(proxy.log()) if r["logger"] == "pgdp.audit"]
    assert [r["sqlstate"] for r in logged] == ["", "3D000"]
    assert {e["pid"] for e in logged[0]["sessions"]} == set(pids.values())

    # Log rotation: the file moved away, SIGHUP, the next record goes to a new file.
    audit_file.rename(tmp_path / "audit.jsonl.1")
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.log(), 10, "the reload")
    with proxy.connect() as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
    wait_until(audit_file.exists, 10, "the reopened audit file")
    (rotated,) = _json_lines(audit_file.read_text())
    assert rotated["statement"] == f"CLEAN CONNECTION TO ALL FOR DATABASE {db}"
    assert len((tmp_path / "audit.jsonl.1").read_text().splitlines()) == 2


def test_audit_record_in_text_format(start_proxy, pg: PgServer, make_db, victims) -> None:
    proxy = start_proxy()
    db = make_db()
    victim = victims.open("v", pg.dsn(db))
    with proxy.connect() as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    line = wait_until(
        lambda: next((x for x in proxy.log().splitlines() if "pgdp.audit" in x), None),
        10,
        "the audit line",
    )
    assert "result=ok terminated=1 skipped=0 remaining=0" in line
    sessions = re.search(r' sessions="((?:[^"\\]|\\.)*)"', line).group(1)  # type: ignore[union-attr]
    (entry,) = json.loads(sessions.replace('\\"', '"'))
    assert entry["pid"] == victim.pid and entry["outcome"] == "terminated"


def test_audit_names_the_role_and_application_the_clean_ran_with(
    start_proxy, pg: PgServer, make_db, make_role, victims: Victims, tmp_path: Path
) -> None:
    """SET ROLE and SET application_name after login: the record's ``role`` and ``app``
    are what the statement ran with, ``user`` the login role (also in the text line)."""
    audit_file = tmp_path / "audit.jsonl"
    proxy = start_proxy("--audit-log", str(audit_file))
    db = make_db()
    operator = make_role("audit_operator", "createdb")
    with pg.connect() as admin:
        admin.execute(f"alter database {db} owner to audit_operator")
    victims.open("v", pg.dsn(db, user=operator, password="pw"))
    with proxy.connect(application_name="at-login") as conn:
        conn.execute("SET ROLE audit_operator")
        conn.execute("SET application_name = 'runbook \"42\"'")
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    victims.assert_fate({"v"})
    wait_until(audit_file.exists, 10, "the audit file")
    (record,) = _json_lines(audit_file.read_text())
    assert (record["user"], record["role"], record["app"]) == (
        pg.user,
        operator,
        'runbook "42"',
    )
    line = wait_until(
        lambda: next((x for x in proxy.log().splitlines() if "pgdp.audit" in x), None),
        10,
        "the audit line",
    )
    assert f" user={pg.user} role={operator} " in line


def _local(conn: psycopg.Connection) -> str:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def test_audit_names_real_clients_of_every_worker(
    start_proxy, pg: PgServer, make_db, victims: Victims, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    proxy = start_proxy("--workers", "2", "--audit-log", str(audit_file))
    db = make_db()
    addresses: dict[int, str] = {}

    def workers_used() -> set[str]:
        return set(re.findall(r"\[(\d+)\] conn=\d+ .* opened app=victim-", proxy.log()))

    # Victims until both workers serve some (the kernel hashes each connection to one:
    # 30 all on one worker would happen once in 2**29 runs).
    for i in range(30):
        victim = victims.open(f"w{i}", proxy.dsn(db))
        addresses[victim.pid] = _local(victim.conn)
        if i >= 3 and len(wait_until(workers_used, 10, "the opened lines")) == 2:
            break
    assert len(workers_used()) == 2
    with proxy.connect() as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
    victims.assert_fate(set(victims.all))
    wait_until(lambda: audit_file.exists() and audit_file.read_text(), 10, "the audit record")
    (record,) = _json_lines(audit_file.read_text())
    assert {entry["pid"]: entry.get("real_client") for entry in record["sessions"]} == addresses


@pytest.mark.parametrize("leave", ["close", "half-close"])
def test_a_client_that_leaves_at_once_is_still_audited(
    start_proxy, pg: PgServer, make_db, victims: Victims, tmp_path: Path, leave: str
) -> None:
    """The server runs a CLEAN whether or not its client waits for the answer: the proxy
    reads the answer on and writes the record, then lets the server connection go."""
    audit_file = tmp_path / "audit.jsonl"
    proxy = start_proxy("--audit-log", str(audit_file))
    db = make_db()
    victims.open("idle", pg.dsn(db))
    victims.open("busy", pg.dsn(db), state="active")
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        handshake(sock, pg.user, application_name="leaver")
        sock.sendall(query_message(statement))
        if leave == "half-close":
            sock.shutdown(socket.SHUT_WR)
    victims.assert_fate({"idle", "busy"})
    wait_until(
        lambda: audit_file.exists() and audit_file.read_text().strip(), 30, "the audit record"
    )
    (record,) = _json_lines(audit_file.read_text())
    assert record["statement"] == statement and record["app"] == "leaver"
    assert record["result"] == "ok" and record["terminated"] == 2
    assert {entry["pid"] for entry in record["sessions"]} == {
        victim.pid for victim in victims.all.values()
    }
    # And then the server connection is let go: no backend of the leaver stays.
    with pg.connect() as admin:
        wait_until(
            lambda: (
                not admin.execute(
                    "select 1 from pg_stat_activity where application_name = 'leaver'"
                ).fetchall()
            ),
            30,
            "the leaver's backend to exit",
        )


def test_a_clean_cancelled_while_it_waits_is_audited_with_its_victims(
    start_proxy, pg: PgServer, make_db, make_role, victims: Victims, tmp_path: Path
) -> None:
    """The sessions are terminated the moment they are signalled: a statement cancelled
    while it waits for them to exit (here statement_timeout, while a victim cannot exit:
    dropping its temporary table at exit waits for a lock another session holds) is
    audited with them, and its error."""
    audit_file = tmp_path / "audit.jsonl"
    proxy = start_proxy("--audit-log", str(audit_file), "--clean-wait-timeout", "60")
    db = make_db()
    role = make_role("audit_slow")  # the victim's role: the locker (superuser) stays
    victim = victims.open("slow", pg.dsn(db, user=role, password="pw"))
    victim.conn.execute("create temp table held (x int)")
    (schema,) = victim.conn.execute(
        "select nspname from pg_namespace where oid = pg_my_temp_schema()"
    ).fetchone()
    with pg.connect(dbname=db) as locker:
        locker.execute("begin")
        locker.execute(f"lock table {schema}.held in access share mode")
        statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db} TO USER {role}"
        with proxy.connect() as conn:
            conn.execute("set statement_timeout = '500ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(statement)
            assert conn.execute("select 'usable'").fetchone() == ("usable",)
        wait_until(lambda: audit_file.exists() and audit_file.read_text(), 10, "the record")
        (record,) = _json_lines(audit_file.read_text())
        assert record["statement"] == statement
        assert record["result"] == "error" and record["sqlstate"] == "57014"
        assert (record["terminated"], record["skipped"]) == (1, 0)
        (entry,) = record["sessions"]
        assert entry["pid"] == victim.pid and entry["outcome"] == "terminated"
        line = next(x for x in proxy.log().splitlines() if "pgdp.audit" in x)
        assert "result=error sqlstate=57014" in line and "terminated=1 skipped=0" in line
    victims.assert_fate({"slow"})  # the lock is gone: it could exit
