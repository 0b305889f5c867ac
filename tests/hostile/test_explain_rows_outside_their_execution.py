"""EXPLAIN CLEAN CONNECTION rows: the query itself carries the real client addresses of
the sessions through the proxy (under PostgreSQL's visibility rules). Every protocol path
by which those rows (or a neighbour's) reach the client must keep them right and agree on
which replies belong to the execution:

* a portal bound to the rewritten statement can be read by SQL ``FETCH`` (protocol-level
  named portals and cursors share one namespace);
* ``DEALLOCATE ALL`` in a transaction block drops the prepared statements, not the open
  portals bound to them;
* a simple Query sent after an Execute without a Sync is answered in the same response
  group (one ReadyForQuery for both), so the Execute's completion comes first.

No row may carry another form than an address, and the real client address of a session
the caller cannot see in pg_stat_activity must never reach a client. Both builds
(compiled and ``PGDP_PURE_PYTHON=1``) must say the same.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import PgServer, ProxyProcess
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

RAW = re.compile(r"^\d+/")
CLIENT_ADDR = 4  # the column of client_addr among EXPLAIN's


def replies(sock: socket.socket) -> list[tuple[str, object]]:
    """Up to ReadyForQuery: ("row", [values]), ("tag", str), ("error", message), ..."""
    out: list[tuple[str, object]] = []
    for kind, body in read_until_ready(sock):
        if kind == b"D":
            count, pos, values = struct.unpack("!H", body[:2])[0], 2, []
            for _ in range(count):
                size = struct.unpack("!i", body[pos : pos + 4])[0]
                pos += 4
                values.append(None if size < 0 else body[pos : pos + size].decode())
                pos += max(size, 0)
            out.append(("row", values))
        elif kind == b"C":
            out.append(("tag", body[:-1].decode()))
        elif kind in (b"E", b"N"):
            out.append(("error" if kind == b"E" else "notice", error_fields(body).get("M")))
        elif kind == b"s":
            out.append(("suspended", None))
    return out


def rows(answer: list[tuple[str, object]]) -> list[list]:
    return [value for kind, value in answer if kind == "row"]  # type: ignore[misc]


def raw_addresses(answer: list[tuple[str, object]]) -> list[str]:
    """The client_addr values still in the query's own ``<pid>/<address>`` form."""
    return [
        row[CLIENT_ADDR]
        for row in rows(answer)
        if len(row) > CLIENT_ADDR and row[CLIENT_ADDR] and RAW.match(row[CLIENT_ADDR])
    ]


@pytest.fixture(params=["compiled", "interpreted"])
def build_proxy(
    request: pytest.FixtureRequest, start_proxy: Callable[..., ProxyProcess]
) -> ProxyProcess:
    env = {"PGDP_PURE_PYTHON": "1"} if request.param == "interpreted" else {"PGDP_PURE_PYTHON": ""}
    return start_proxy(env=env)


@pytest.fixture
def session(build_proxy: ProxyProcess) -> Iterator[Callable[..., socket.socket]]:
    opened: list[socket.socket] = []

    def connect(user: str = "postgres", database: str = "postgres") -> socket.socket:
        sock = socket.create_connection((build_proxy.host, build_proxy.port), timeout=10)
        opened.append(sock)
        sock.sendall(startup_packet(user, database, application_name="rows-outside"))
        answer = read_until_ready(sock)
        assert not [body for kind, body in answer if kind == b"E"], answer
        return sock

    yield connect
    for sock in opened:
        sock.close()


def explain_of(db: str) -> str:
    return f"EXPLAIN CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}"


def test_fetch_from_a_protocol_portal_of_explain(
    build_proxy: ProxyProcess,
    session: Callable[..., socket.socket],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """JDBC-style: the EXPLAIN is bound to a named portal in a transaction block and read
    a row at a time; the rest is read with SQL FETCH from the same portal."""
    db = make_db()
    for name in ("fetch-a", "fetch-b"):
        victims.open(name, build_proxy.dsn(db))
    sock = session()
    sock.sendall(query_message("BEGIN"))
    read_until_ready(sock)
    sock.sendall(parse(b"st", explain_of(db)) + bind(b"p", b"st") + execute(b"p", 1) + SYNC)
    first = replies(sock)
    assert ("suspended", None) in first, first
    sock.sendall(query_message("FETCH ALL FROM p"))
    rest = replies(sock)
    sock.sendall(query_message("COMMIT"))
    read_until_ready(sock)
    assert len(rows(first) + rows(rest)) >= 2, (first, rest)
    assert raw_addresses(first) == [], first
    assert raw_addresses(rest) == [], rest


def test_deallocate_all_keeps_the_open_portal(
    build_proxy: ProxyProcess,
    session: Callable[..., socket.socket],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """DEALLOCATE ALL drops the prepared statements; the portal bound to the EXPLAIN in
    this transaction block stays open and its Execute still returns the EXPLAIN's rows."""
    db = make_db()
    victims.open("dealloc-a", build_proxy.dsn(db))
    sock = session()
    sock.sendall(query_message("BEGIN"))
    read_until_ready(sock)
    sock.sendall(parse(b"st", explain_of(db)) + bind(b"p", b"st") + SYNC)
    read_until_ready(sock)
    sock.sendall(query_message("DEALLOCATE ALL"))
    read_until_ready(sock)
    sock.sendall(execute(b"p") + SYNC)
    answer = replies(sock)
    sock.sendall(query_message("COMMIT"))
    read_until_ready(sock)
    assert rows(answer), answer
    assert raw_addresses(answer) == [], answer
    assert ("tag", "EXPLAIN") in answer, answer


def test_query_after_an_execute_without_sync(
    build_proxy: ProxyProcess,
    session: Callable[..., socket.socket],
    victims: Victims,
    make_db: Callable[..., str],
) -> None:
    """Parse/Bind/Execute of ``SELECT 1`` and then, before any Sync, a simple Query with
    the EXPLAIN: PostgreSQL answers it in the Execute's group, or skips it if an earlier
    message failed; the proxy cannot tell, so it rewrites nothing more in the session:
    ``SELECT 1`` keeps its tag and the EXPLAIN is the server's syntax error."""
    db = make_db()
    victims.open("unsynced-a", build_proxy.dsn(db))
    sock = session()
    sock.sendall(
        parse(b"", "SELECT 1") + bind(b"", b"") + execute(b"") + query_message(explain_of(db))
    )
    answer = replies(sock)
    assert answer[:2] == [("row", ["1"]), ("tag", "SELECT 1")], answer
    assert answer[2][0] == "error" and 'at or near "CLEAN"' in str(answer[2][1]), answer


def test_unsynced_execute_cannot_read_a_hidden_real_client(
    pg: PgServer,
    build_proxy: ProxyProcess,
    session: Callable[..., socket.socket],
    victims: Victims,
    make_role: Callable[..., str],
) -> None:
    """A role without rights on a superuser's session sees no client address of it in
    pg_stat_activity, and EXPLAIN shows it none either. Its own SELECT shaped as if it
    were the EXPLAIN (its row put where the EXPLAIN's slot is) must not have the proxy
    fill in that session's real client: the proxy would answer any ``<pid>/`` it asks."""
    nosy = make_role("rows_nosy")
    hidden = victims.open("rows-hidden", build_proxy.dsn("postgres"))
    sock = session(user=nosy)
    probe = f"SELECT 0, 0, 0, 0, pid::text || '/' FROM pg_stat_activity WHERE pid = {hidden.pid}"
    sock.sendall(
        parse(b"", probe)
        + bind(b"", b"")
        + execute(b"")
        + query_message(f"EXPLAIN CLEAN CONNECTION TO ALL TO USER {nosy}")
    )
    answer = replies(sock)
    (probe_row, *_) = rows(answer)
    problems = []
    # what the proxy knows of the hidden session: its real client, never to be shown
    if probe_row[CLIENT_ADDR] != f"{hidden.pid}/":
        problems.append(f"hidden session's client shown: {probe_row[CLIENT_ADDR]}")
    # and the EXPLAIN's own error is the statement's, not the query's sentinel
    errors = [value for kind, value in answer if kind == "error"]
    if any("pgdp:" in str(error) for error in errors):
        problems.append(f"the query's sentinel error reached the client: {errors}")
    assert not problems, (problems, answer)
