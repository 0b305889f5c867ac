"""COPY messages and reply attribution: the frontend subtracts the Syncs it saw since the
last Execute when a CopyDone or CopyFail arrives (the server ignores a Sync during COPY
IN), and knows nothing of a Query the server reads as the bad message of a COPY IN.

* A CopyDone or CopyFail outside COPY is ignored by the server (the protocol allows it),
  but a Sync answered just before it is still subtracted: the proxy's groups fall one
  behind the server's, so every later CLEAN is filed for a group already answered.
* A Sync the server ignores in COPY IN opens no group, but the frontend only knows so when
  a CopyDone or CopyFail follows; a COPY that fails on its data needs neither, so the
  proxy's groups run one ahead of the server's: the CLEAN's replies go unshaped and
  unaudited, and the next statement's are shaped and audited as the CLEAN's.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.wire import message
from tests.conftest import ProxyProcess
from tests.e2e.victims import Victims
from tests.rawpg import error_fields, query_message, read_until_ready, startup_packet

SYNC = message(b"S", b"")
COPY_DONE = message(b"c", b"")
COPY_FAIL = message(b"f", b"client gave up\0")


def replies(sock: socket.socket) -> list[tuple[str, str]]:
    out = []
    for kind, body in read_until_ready(sock):
        if kind == b"C":
            out.append(("tag", body[:-1].decode()))
        elif kind in (b"E", b"N"):
            fields = error_fields(body)
            out.append(("error" if kind == b"E" else "notice", fields.get("M", "")))
            if "W" in fields:
                out.append(("context", fields["W"]))
    return out


def leaks(answer: list[tuple[str, str]]) -> list[str]:
    return [
        text for kind, text in answer if kind == "context" or (kind != "tag" and "pgdp:" in text)
    ]


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


# Known and not fixed yet: the frontend guesses which Syncs the server ignored during
# COPY IN from the client's own messages (CopyDone/CopyFail), and these sequences defeat
# the guess. The fix is to learn COPY IN from the server's CopyInResponse. Strict: these
# fail as long as the guess stands, and tell when it no longer does.
pytestmark = pytest.mark.xfail(
    strict=True, reason="reply attribution around COPY is guessed from the client's messages"
)


@pytest.fixture
def audited(start_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> tuple[ProxyProcess, Path]:
    audit = tmp_path / "audit.jsonl"
    return start_proxy("--audit-log", str(audit)), audit


@pytest.fixture
def session(audited: tuple[ProxyProcess, Path]) -> Iterator[socket.socket]:
    proxy, _ = audited
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    sock.sendall(startup_packet("postgres", application_name="copy-groups"))
    read_until_ready(sock)
    yield sock
    sock.close()


@pytest.mark.parametrize("ending", [COPY_DONE, COPY_FAIL], ids=["copydone", "copyfail"])
def test_copy_end_outside_copy_after_a_sync_keeps_clean_shaped_and_audited(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
    ending: bytes,
) -> None:
    """Sync, then a CopyDone/CopyFail the server ignores (not in COPY), then a CLEAN: the
    CLEAN runs; it must be shaped (tag, no INFO marker, no CONTEXT) and audited once."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-end-victim", proxy.dsn(db))
    session.sendall(SYNC + ending)
    assert read_until_ready(session)[-1][0] == b"Z"
    session.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(session)
    victims.assert_fate({"copy-end-victim"})
    assert not leaks(answer), answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    found = records(audit)
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found


def test_sync_ignored_in_copy_in_then_a_data_error_keeps_groups(
    audited: tuple[ProxyProcess, Path],
    session: socket.socket,
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Simple-Query COPY FROM STDIN; the client sends a Sync (the server ignores it in
    COPY IN) and bad CopyData: the COPY fails (22P02) and the server answers with one
    ReadyForQuery, and the client sends no CopyDone (the protocol needs none after the
    error). The Sync opened no group; a CLEAN sent next is the CLEAN (shaped, audited
    once), and the statement after it is itself (not tagged CLEAN, not audited)."""
    proxy, audit = audited
    db = make_db()
    victims.open("copy-sync-victim", proxy.dsn(db))
    session.sendall(query_message("CREATE TEMP TABLE t (a int)"))
    read_until_ready(session)
    session.sendall(query_message("COPY t FROM STDIN"))
    kind, _ = _read_one(session)
    assert kind == b"G"
    session.sendall(SYNC + message(b"d", b"not a number\n"))
    failed = replies(session)
    assert failed[0][0] == "error" and "integer" in failed[0][1], failed
    session.sendall(query_message(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"))
    answer = replies(session)
    session.sendall(query_message("SELECT 1"))
    after = replies(session)
    victims.assert_fate({"copy-sync-victim"})
    assert not leaks(answer), answer
    assert ("tag", "CLEAN CONNECTION") in answer, answer
    assert after == [("tag", "SELECT 1")], after
    found = records(audit)
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found


def _read_one(sock: socket.socket) -> tuple[bytes, bytes]:
    from tests.rawpg import read_message

    msg = read_message(sock)
    assert msg is not None
    return msg


def test_copy_done_outside_copy_keeps_explain_errors_shaped(
    session: socket.socket,
) -> None:
    """The same shift for EXPLAIN CLEAN CONNECTION: its planned failure must reach the
    client as the statement's own error (3D000), never as the 22P02 'pgdp:explain:'
    sentinel the query uses internally."""
    session.sendall(SYNC + COPY_DONE)
    read_until_ready(session)
    session.sendall(
        query_message("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE no_such_database_here")
    )
    codes = []
    for kind, body in read_until_ready(session):
        if kind == b"E":
            fields = error_fields(body)
            codes.append((fields.get("C"), fields.get("M", "")))
    assert len(codes) == 1 and codes[0][0] == "3D000", codes
    assert "pgdp:" not in codes[0][1], codes
