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
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ProxyProcess, wait_until
from tests.e2e.victims import Victims
from tests.rawpg import (
    FLUSH,
    TERMINATE,
    bind,
    execute,
    parse,
    read_until_ready,
    startup_packet,
)


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


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
