"""One CLEAN CONNECTION execution, one audit record, and the program's INFO lines (the
``pgdp:audit`` marker) consumed, never forwarded, whatever the protocol path:

* a simple Query sent after an Execute without a Sync is answered in the Execute's group,
  or skipped if an earlier message failed: the proxy rewrites nothing more then;
* a portal of the CLEAN executed twice in a transaction block runs once (the second
  Execute fails with "portal cannot be run": nothing ran, nothing to audit);
* an Execute the server skips because an earlier message of its group failed never ran.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ProxyProcess
from tests.e2e.victims import Victims
from tests.rawpg import (
    SYNC,
    bind,
    error_fields,
    execute,
    parse,
    query_message,
    read_until_ready,
    startup_packet,
)


def replies(sock: socket.socket) -> list[tuple[str, str]]:
    out = []
    for kind, body in read_until_ready(sock):
        if kind == b"C":
            out.append(("tag", body[:-1].decode()))
        elif kind in (b"E", b"N"):
            out.append(("error" if kind == b"E" else "notice", error_fields(body).get("M", "")))
    return out


def markers(answer: list[tuple[str, str]]) -> list[str]:
    return [text for kind, text in answer if kind != "tag" and "pgdp:" in text]


@pytest.fixture
def session(audited: tuple[ProxyProcess, Path]) -> Iterator[socket.socket]:
    proxy, _ = audited
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    sock.sendall(startup_packet("postgres", application_name="audit-outside"))
    read_until_ready(sock)
    yield sock
    sock.close()


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


def test_clean_after_an_execute_without_sync(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """A simple Query inside an unsynced extended-protocol sequence is answered in that
    sequence's group, or skipped if an earlier message of it failed: the proxy cannot
    tell which, so it rewrites nothing more in that session (certain or nothing). The
    CLEAN is the server's syntax error: it does not run, nothing is audited or forwarded
    of the program, and the session goes on (its next CLEAN is a syntax error too)."""
    proxy, audit = audited
    db = make_db()
    victims.open("unsynced-victim", proxy.dsn(db))
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(
        parse(b"", "SELECT 1") + bind(b"", b"") + execute(b"") + query_message(statement)
    )
    answer = replies(session)
    assert not markers(answer), answer
    assert answer[0] == ("tag", "SELECT 1"), answer
    assert answer[1][0] == "error" and 'at or near "CLEAN"' in answer[1][1], answer
    session.sendall(SYNC)
    read_until_ready(session)
    session.sendall(query_message(statement))
    later = replies(session)
    assert later[0][0] == "error" and 'at or near "CLEAN"' in later[0][1], later
    session.sendall(query_message("SELECT 1"))
    assert replies(session) == [("tag", "SELECT 1")]
    assert records(audit) == []
    victims.assert_fate(set())


def test_unsynced_query_with_a_prepared_clean_ends_the_session(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """With a CLEAN statement prepared, whose later executions the proxy could no longer
    shape or audit, the same sequence ends the session (08P01) before the Query runs."""
    proxy, audit = audited
    db = make_db()
    victims.open("prepared-victim", proxy.dsn(db))
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(parse(b"c", statement) + SYNC)
    read_until_ready(session)
    session.sendall(parse(b"", "SELECT 1") + bind(b"", b"") + query_message("SELECT 2"))
    fatal = b""
    while True:
        data = session.recv(65536)
        if not data:
            break
        fatal += data
    assert b"08P01" in fatal and b"unsynced extended-protocol sequence" in fatal
    assert records(audit) == []
    victims.assert_fate(set())


def test_a_portal_executed_twice_runs_and_is_audited_once(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    proxy, audit = audited
    db = make_db()
    victims.open("twice-victim", proxy.dsn(db))
    session.sendall(query_message("BEGIN"))
    read_until_ready(session)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(
        parse(b"c", statement) + bind(b"cp", b"c") + execute(b"cp") + execute(b"cp") + SYNC
    )
    answer = replies(session)
    session.sendall(query_message("ROLLBACK"))
    read_until_ready(session)
    assert answer[0] == ("tag", "CLEAN CONNECTION"), answer
    assert answer[1][0] == "error", answer  # portal "cp" cannot be run
    # The record of the CLEAN is written before its answer is forwarded.
    found = records(audit)
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found


def test_an_execute_the_server_skipped_is_not_audited(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    make_db: Callable[..., str],
) -> None:
    """A Parse that fails between the Bind and the Execute of the CLEAN: the server skips
    the Execute (up to the Sync); the CLEAN never ran. Its record must not claim it
    failed with the other statement's syntax error."""
    _, audit = audited
    db = make_db()
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    session.sendall(
        parse(b"c", statement) + bind(b"", b"c") + parse(b"bad", "SELEC") + execute(b"") + SYNC
    )
    answer = replies(session)
    assert [kind for kind, _ in answer] == ["error"], answer
    session.sendall(query_message("SELECT 1"))  # a later round trip: anything due is written
    read_until_ready(session)
    assert records(audit) == [], records(audit)


def test_clean_in_a_transaction_block_with_quiet_client(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """client_min_messages = error and a savepoint: INFO still reaches the proxy (INFO
    always goes to the client), is consumed, and the record is the CLEAN's."""
    proxy, audit = audited
    db = make_db()
    victims.open("quiet-victim", proxy.dsn(db))
    session.sendall(
        query_message(
            "BEGIN; SET LOCAL client_min_messages = error; SAVEPOINT s; "
            f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}; RELEASE s; COMMIT"
        )
    )
    answer = replies(session)
    assert not markers(answer), answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    found = records(audit)
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found
