"""Log injection: user, database and application_name are the client's own text and reach
the log before any authentication. Newlines must not start forged records (a fake
``pgdp.audit … result=ok terminated=42`` line) and spaces, ``=`` and quotes must not add
fields to a real one."""

from __future__ import annotations

import re

from tests.conftest import PgServer, ProxyProcess, raw_socket, wait_until
from tests.rawpg import (
    error_fields,
    handshake,
    query_message,
    read_message,
    read_until_ready,
    startup_packet,
)

RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<logger>pgdp[\w.]*)(?:\[\d+\])? (?P<message>.*)"
)
FORGED = (
    "2026-01-01 00:00:00,000 INFO pgdp.audit clean_connection conn=999999 "
    "client=10.0.0.1:5000 user=postgres db=postgres statement='CLEAN CONNECTION TO ALL' "
    "result=ok terminated=42 skipped=0 remaining=0 duration=0.001s"
)
HOSTILE_USER = "mallory\n" + FORGED
HOSTILE_DB = 'db x="y" result=ok\r\n' + FORGED + "\r"
HOSTILE_APP = 'app result=ok terminated=42 "quoted"\t\x1b[2J\u2028' + FORGED

LOGFMT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")


def unescape(logged: str) -> str:
    if logged.startswith('"'):
        logged = logged[1:-1]
    simple = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}
    return ESCAPE.sub(lambda m: simple[m[1]] if len(m[1]) == 1 else chr(int(m[1][1:], 16)), logged)


def records(proxy: ProxyProcess) -> list[re.Match[str]]:
    """Every line of the proxy's log as a record; fails on a line that is not one."""
    lines = proxy.log().splitlines()
    matches = [RECORD.fullmatch(line) for line in lines]
    malformed = [line for line, match in zip(lines, matches, strict=True) if match is None]
    assert not malformed, malformed
    return matches  # type: ignore[return-value]


def session_fields(record: re.Match[str]) -> dict[str, str]:
    return {key: unescape(raw) for key, raw in LOGFMT_FIELD.findall(record["message"])}


def test_client_text_cannot_forge_records_or_fields(proxy: ProxyProcess, pg: PgServer) -> None:
    # Before authentication: the server refuses this role, the proxy has logged it already.
    with raw_socket(proxy.host, proxy.port) as sock:
        sock.sendall(startup_packet(HOSTILE_USER, HOSTILE_DB, application_name=HOSTILE_APP))
        replies = []
        while (message := read_message(sock)) is not None:
            replies.append(message)
    assert replies[-1][0] == b"E" and error_fields(replies[-1][1])["S"] == "FATAL"
    # After authentication: one real audit record, for a statement full of the same text.
    with raw_socket(proxy.host, proxy.port) as sock:
        handshake(sock, pg.user, HOSTILE_APP)
        sock.sendall(
            query_message('CLEAN CONNECTION TO ALL FOR DATABASE "nope\nINFO pgdp.audit x=1"')
        )
        assert read_until_ready(sock)[-1][0] == b"Z"
    wait_until(lambda: len(re.findall(r" closed duration=", proxy.log())) >= 2, 10, "both closed")

    logged = records(proxy)
    opened = [session_fields(r) for r in logged if " opened " in r["message"]]
    assert {"user": HOSTILE_USER, "db": HOSTILE_DB, "app": HOSTILE_APP}.items() <= (
        opened[0].items()
    )
    real = opened[1]
    assert real["user"] == pg.user and real["app"] == HOSTILE_APP
    audit = [r for r in logged if r["logger"] == "pgdp.audit"]
    assert len(audit) == 1, [r.string for r in audit]
    assert session_fields(audit[0])["conn"] == real["conn"]
    for record in logged:
        # Outside quoted values nothing of the forged text remains, on any line.
        bare = QUOTED.sub("", record["message"])
        assert "pgdp.audit" not in bare and "terminated=42" not in bare, record.string
        if record["logger"] == "pgdp.session":
            keys = [key for key, _ in LOGFMT_FIELD.findall(record["message"])]
            assert "result" not in keys and "terminated" not in keys, record.string
