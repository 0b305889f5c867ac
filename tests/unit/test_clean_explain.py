"""EXPLAIN CLEAN CONNECTION in the pure rewrite (no streams, no sockets): which texts are
rewritten, from where, the syntax fix at CLEAN, and the shaping of its replies."""

from __future__ import annotations

import pytest

from proxy.clean import CleanConnectionDialect, CleanPlan, ExplainPlan, rewrite_text
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
