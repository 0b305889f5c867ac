"""A CLEAN executed by an Execute the client never follows with a Sync, the client then
leaving: PostgreSQL runs an Execute as soon as it reads it (the Sync only ends the
implicit transaction), and pg_terminate_backend is not transactional, so the victims are
terminated whether or not a Sync ever comes. The proxy drains the server's answers for
the audit only for executions "sent in a closed group" (a Query, or an Execute followed
by a Sync): here it closes the server connection and the CLEAN that ran has no record.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.wire import message
from tests.conftest import ProxyProcess, wait_until
from tests.e2e.victims import Victims
from tests.rawpg import read_until_ready, startup_packet

FLUSH = message(b"H", b"")
TERMINATE = message(b"X", b"")


def parse(name: bytes, sql: str) -> bytes:
    return message(b"P", name + b"\0" + sql.encode() + b"\0\0\0")


def bind(portal: bytes, statement: bytes) -> bytes:
    return message(b"B", portal + b"\0" + statement + b"\0" + b"\0\0" + b"\0\0" + b"\0\0")


def execute(portal: bytes) -> bytes:
    return message(b"E", portal + b"\0" + struct.pack("!i", 0))


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


@pytest.fixture
def audited(start_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> tuple[ProxyProcess, Path]:
    audit = tmp_path / "audit.jsonl"
    return start_proxy("--audit-log", str(audit)), audit


@pytest.mark.parametrize(
    "goodbye", [b"", FLUSH, TERMINATE, FLUSH + TERMINATE], ids=["close", "flush", "X", "flush-X"]
)
def test_an_unsynced_clean_that_ran_is_audited_when_the_client_leaves(
    audited: tuple[ProxyProcess, Path],
    victims: Victims,
    make_db: Callable[..., str],
    goodbye: bytes,
) -> None:
    proxy, audit = audited
    db = make_db()
    victims.open("unsynced-leaver-victim", proxy.dsn(db))
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    sock.sendall(startup_packet("postgres", application_name="unsynced-leaver"))
    read_until_ready(sock)
    statement = f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"
    sock.sendall(parse(b"", statement) + bind(b"", b"") + execute(b"") + goodbye)
    sock.close()
    # The server ran it: the victim is gone.
    victims.assert_fate({"unsynced-leaver-victim"})
    found = wait_until(lambda: records(audit), 10, "the CLEAN's audit record")
    assert [(r["result"], r["terminated"]) for r in found] == [("ok", 1)], found
