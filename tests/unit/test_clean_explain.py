"""EXPLAIN CLEAN CONNECTION in the pure rewrite (no streams, no sockets): which texts are
rewritten, from where, the syntax fix at CLEAN, and the shaping of its replies."""

from __future__ import annotations

import struct

import pytest

from proxy.clean import (
    CleanConnectionDialect,
    CleanPlan,
    ExplainPlan,
    ExplainRun,
    rewrite_text,
    with_real_client,
)
from proxy.clean_program import explain_error
from proxy.streams import Rewrite, SessionState

DIALECT = CleanConnectionDialect()
S, V, C, M, F, R = (ord(c) for c in "SVCMFR")


def rewrite(text: bytes, *, tracking: bool = False) -> Rewrite | None:
    state = SessionState()
    buf = text + b"\0"
    scan = DIALECT.scanner(state, 0, tracking)
    assert scan.feed(buf, len(buf))
    return rewrite_text(
        buf, 0, len(text), scan, encoding="UTF8", settled=True, wait_seconds=1, check_seconds=1
    )


def test_the_whole_explain_statement_becomes_one_select() -> None:
    head, explain, tail = b"select 1; ", b"EXPLAIN /* c */ CLEAN CONNECTION TO ALL TO u", b"; x"
    result = rewrite(head + explain + tail)
    assert result is not None and result.sql is not None
    query = result.sql[len(head) : -len(tail)]
    assert query.startswith(b"WITH g AS MATERIALIZED") and b";" not in query
    assert [(i, type(plan)) for i, plan in result.planned] == [(1, ExplainPlan)]
    assert result.spans == ((len(head), len(explain), len(query)),)


def test_explain_and_clean_in_one_text() -> None:
    result = rewrite(b"explain clean connection to all to u; CLEAN CONNECTION TO ALL TO u")
    assert result is not None
    assert [type(plan) for _, plan in result.planned] == [ExplainPlan, CleanPlan]


@pytest.mark.parametrize(
    "text",
    [
        b"EXPLAIN SELECT 'clean connection'",
        b"EXPLAIN ANALYZE CLEAN CONNECTION TO ALL TO u",
        b"EXPLAIN (costs off) CLEAN CONNECTION TO ALL TO u",
        b'EXPLAIN "clean" CONNECTION TO ALL TO u',
        b"EXPLAIN CLEANUP CONNECTION TO ALL TO u",
        b"select 1; explain select 2 /* clean connection */",
        b"EXPLAIN SELECT 123abc /* clean connection */",
    ],
)
def test_any_other_explain_is_forwarded_unchanged(text: bytes) -> None:
    result = rewrite(text)
    assert result is None or (result.sql is None and not result.planned and not result.syntax_fix)


def test_explain_leads_do_not_forget_tracked_statements() -> None:
    result = rewrite(b"EXPLAIN SELECT 'clean connection'", tracking=True)
    assert result is None or result.redefines == ()


def test_an_invalid_explain_gets_the_syntax_fix_at_its_clean_token() -> None:
    result = rewrite(b"select 1; EXPLAIN CLEAN CONNECTION TO ALL junk")
    assert result is not None and result.sql is None
    fix = result.syntax_fix
    assert fix is not None
    assert fix.server_position == b"19"  # the server stops at CLEAN, not at EXPLAIN
    assert fix.position == b"43" and b"junk" in fix.message


def test_the_planned_failure_becomes_the_statements_error() -> None:
    run = ExplainPlan().start()
    assert run.completed(b"SELECT 3") == b"EXPLAIN"
    sentinel = b'pgdp:explain:3D000:database "a:pgdp" does not exist:pgdp'
    for words in (b'invalid input syntax for type integer: "%s"', "ungültig: »%s«".encode()):
        fields = [(S, b"ERROR"), (V, b"ERROR"), (C, b"22P02"), (M, words.replace(b"%s", sentinel))]
        fields += [(F, b"numutils.c"), (R, b"pg_strtoint32_safe")]
        assert run.failed(fields) == [
            (S, b"ERROR"),
            (V, b"ERROR"),
            (C, b"3D000"),
            (M, b'database "a:pgdp" does not exist'),
        ]
    other = [(S, b"ERROR"), (C, b"22P02"), (M, b'invalid input syntax for type integer: "x"')]
    assert run.failed(other) is other
    aborted = [(S, b"ERROR"), (C, b"25P02"), (M, b"current transaction is aborted")]
    assert run.failed(aborted) is aborted
    notice = [(S, b"NOTICE"), (M, b"hello")]
    assert run.notice(notice) is notice
    assert explain_error(b"pgdp:explain:bad") is None


def test_an_explain_the_scanner_rejects_does_not_stop_other_cleans() -> None:
    for bad in (b"123abc", b"e'\\777'"):  # pglast's scanner fails on both
        result = rewrite(b"EXPLAIN SELECT " + bad + b"; CLEAN CONNECTION TO ALL TO u")
        assert result is not None
        assert [type(plan) for _, plan in result.planned] == [CleanPlan]


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        (b"EXPLAIN CLEAN CONNECTIONS TO ALL FOR sales", b'at or near "CONNECTIONS"', b"15"),
        (b"EXPLAIN CLEAN", b"syntax error at end of input", b"14"),
        (b'EXPLAIN CLEAN "connection" TO ALL', b'at or near ""connection""', b"15"),
        (b'EXPLAIN CLEAN CONNECTION TO ALL FOR ""', b"zero-length delimited identifier", b"37"),
        (b"EXPLAIN CLEAN CONNECTION TO ALL FOR 9lives", b'at or near "9"', b"37"),
        # The outline gives up on an unterminated quote or comment: still openGauss's error.
        (b'EXPLAIN CLEAN CONNECTION TO ALL FOR "sales', b"unterminated quoted identifier", b"37"),
        (b"EXPLAIN CLEAN CONNECTION TO ALL /* never", b"unterminated /* comment", b"33"),
        (b'EXPLAIN CLEAN CONNECTION TO ALL FOR d; select "oops', None, None),
        (b'EXPLAIN CLEAN; select "oops', b'syntax error at or near ";"', b"14"),
    ],
)
def test_openGauss_errors_after_explain(
    text: bytes, message: bytes | None, position: bytes | None
) -> None:
    result = rewrite(text)
    if message is None:  # a valid EXPLAIN CLEAN before the unterminated quote: the server's
        assert result is None or result.syntax_fix is None
        return
    assert result is not None and result.syntax_fix is not None
    assert result.syntax_fix.server_position == b"9"
    assert message in result.syntax_fix.message and result.syntax_fix.position == position


def test_openGauss_names_after_explain() -> None:
    result = rewrite(b"select 1; EXPLAIN CLEAN CONNECTION TO ALL FOR sales#2024")
    assert result is not None
    assert [(i, type(plan)) for i, plan in result.planned] == [(1, ExplainPlan)]


def test_the_first_clean_token_is_where_the_server_fails_in_an_unfinished_text() -> None:
    """A valid EXPLAIN CLEAN, an EXPLAIN of something else, then an invalid CLEAN that runs
    into an unterminated quote: the server stops at the first CLEAN (the EXPLAIN's)."""
    text = b'EXPLAIN CLEAN CONNECTION TO ALL FOR d; EXPLAIN SELECT 1; CLEAN CONNECTION TO "x'
    result = rewrite(text)
    assert result is not None and result.syntax_fix is not None
    assert result.syntax_fix.server_position == b"9"
    assert result.syntax_fix.message == b'unterminated quoted identifier at or near ""x"'
    assert result.syntax_fix.position == str(text.rindex(b'"x') + 1).encode()


def data_row(*values: bytes | None) -> bytes:
    """A DataRow body: the column count, then each column's length (-1: NULL) and bytes."""
    out = struct.pack("!h", len(values))
    for value in values:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out


def explain_row(
    client_addr: bytes | None, *, pid: bytes = b"4242", start: bytes | None = b"2026-12-05"
) -> bytes:
    return data_row(pid, b"alice", b"sales", b"", client_addr, b"idle", start, b"skip", b"")


REAL = {4242: "192.0.2.7:51234"}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        (explain_row(b"127.0.0.1:40000"), explain_row(b"192.0.2.7:51234")),  # via the proxy
        (explain_row(None), explain_row(b"192.0.2.7:51234")),  # the proxy's Unix socket
        # binary results: the pid as int4, the text columns the same bytes
        (
            explain_row(b"[::1]:5", pid=struct.pack("!i", 4242)),
            explain_row(b"192.0.2.7:51234", pid=struct.pack("!i", 4242)),
        ),
    ],
)
def test_client_addr_is_the_real_client_of_a_session_through_the_proxy(
    sent: bytes, shown: bytes
) -> None:
    assert with_real_client(sent, REAL) == shown


@pytest.mark.parametrize(
    "body",
    [
        explain_row(b"127.0.0.1:40000", pid=b"17"),  # not through the proxy
        explain_row(None, start=None),  # hidden from the caller: stays NULL
        explain_row(b"127.0.0.1:40000", pid=struct.pack("!i", 17)),
        data_row(None, b"alice", b"sales", None, None, None, None, b"check", b"pass"),
        data_row(b"4242", b"2"),  # not EXPLAIN's shape
        explain_row(b"x")[: len(data_row(b"4242", b"alice", b"sales", b"")) + 6],  # cut
        b"",
        struct.pack("!h", 9) + struct.pack("!i", 1 << 30),  # a length past the end
        explain_row(b"127.0.0.1:40000", pid=b"42x"),
    ],
)
def test_rows_of_another_kind_are_left_alone(body: bytes) -> None:
    assert with_real_client(body, REAL) is None


def test_an_execution_reads_the_peers_once_when_its_first_row_arrives() -> None:
    reads: list[int] = []

    def peers() -> dict[int, str]:
        reads.append(1)
        return {4242: "192.0.2.7:1"}

    plan = ExplainPlan(peers)
    run = plan.start()
    assert isinstance(run, ExplainRun) and run.shapes_rows and reads == []
    assert run.row(explain_row(b"10.0.0.1:2")) == explain_row(b"192.0.2.7:1")
    assert run.row(explain_row(b"10.0.0.1:3")) == explain_row(b"192.0.2.7:1")
    assert reads == [1]
    plan.start().row(explain_row(b"10.0.0.1:2"))  # a new execution: read again
    assert reads == [1, 1]
