"""The pure rewrite, fed directly (no streams, no sockets): which bytes are replaced, the
spans that map the server's error positions back, character counting in the client's
encoding, certain-or-nothing decoding, syntax fixes, and the shaping of one execution."""

from __future__ import annotations

import pytest

from proxy.clean import CLEAN_CONNECTION_TAG, CleanConnectionDialect, CleanPlan, rewrite_text
from proxy.clean_program import AUDIT_MARKER
from proxy.streams import Rewrite, SessionState, _map_position

DIALECT = CleanConnectionDialect()


def rewrite(text: bytes, encoding: str = "UTF8", *, settled: bool = True) -> Rewrite | None:
    state = SessionState()
    state.client_encoding = encoding
    buf = text + b"\0"
    scan = DIALECT.scanner(state, 0, False)
    assert scan.feed(buf, len(buf))
    return rewrite_text(
        buf, 0, len(text), scan, encoding=encoding, settled=settled, wait_seconds=1, check_seconds=1
    )


def test_only_the_statement_is_replaced() -> None:
    head, clean, tail = b"select 1; ", b"CLEAN CONNECTION TO ALL", b"; select 'clean'"
    result = rewrite(head + clean + tail)
    assert result is not None and result.sql is not None
    assert result.sql.startswith(head) and result.sql.endswith(tail)
    program = result.sql[len(head) : -len(tail)]
    assert program.startswith(b"DO $pgdp_clean$") and program.endswith(b"$pgdp_clean$")
    ((index, plan),) = result.planned
    assert index == 1 and isinstance(plan, CleanPlan) and plan.text == clean.decode()
    assert result.spans == ((len(head), len(clean), len(program)),)
    assert result.syntax_fix is None


def test_statements_are_indexed_among_non_empty_ones() -> None:
    result = rewrite(b";; ;CLEAN CONNECTION TO ALL TO u; select 1; clean connection to all force")
    assert result is not None
    assert [index for index, _ in result.planned] == [0, 2]
    assert [plan.text for _, plan in result.planned] == [  # type: ignore[attr-defined]
        "CLEAN CONNECTION TO ALL TO u",
        "clean connection to all force",
    ]


def test_spans_count_characters_of_the_client_encoding() -> None:
    head = "select 'héllo wörld'; ".encode()  # 22 characters, 24 bytes
    result = rewrite(head + b"CLEAN CONNECTION TO ALL")
    assert result is not None
    assert result.spans[0][0] == 22
    latin1 = rewrite("select 'é'; CLEAN CONNECTION TO ALL".encode("latin-1"), "LATIN1")
    assert latin1 is not None and latin1.spans[0][0] == 12


def test_error_positions_map_back_into_the_clients_text() -> None:
    text = b"select 1; CLEAN CONNECTION TO ALL; select nosuchcolumn"
    result = rewrite(text)
    assert result is not None and result.sql is not None
    server_at = result.sql.decode().index("nosuchcolumn") + 1  # 1-based, as the server says
    fields = [(ord("M"), b"column does not exist"), (ord("P"), str(server_at).encode())]
    mapped = _map_position(result.spans, fields)
    assert mapped is not None
    assert dict(mapped)[ord("P")] == str(text.decode().index("nosuchcolumn") + 1).encode()
    inside = [(ord("P"), str(len(b"select 1; ") + 30).encode())]  # inside the program
    assert dict(_map_position(result.spans, inside) or inside)[ord("P")] == b"11"
    before = [(ord("P"), b"3")]
    assert _map_position(result.spans, before) is None  # before any span: unchanged


def test_invalid_bytes_in_the_statement_mean_nothing_is_rewritten() -> None:
    result = rewrite(b'CLEAN CONNECTION TO ALL FOR DATABASE "d\xff"')
    assert result is None or (result.sql is None and not result.planned)


@pytest.mark.parametrize(
    "text",
    [b"select '\xc3\xa9'; CLEAN CONNECTION TO ALL", b"select E'\\\\'; CLEAN CONNECTION TO ALL"],
)
def test_unsettled_texts_that_could_read_differently_are_left_alone(text: bytes) -> None:
    result = rewrite(text, settled=False)
    assert result is None or (result.sql is None and not result.planned)
    settled = rewrite(text, settled=True)
    assert settled is not None and settled.planned


def test_an_invalid_statement_gets_a_syntax_fix_at_its_clean_token() -> None:
    result = rewrite(b"select 1; CLEAN CONNECTION TO ALL junk")
    assert result is not None and result.sql is None and not result.planned
    fix = result.syntax_fix
    assert fix is not None
    assert fix.server_position == b"11"  # where the server stops: the CLEAN token
    assert fix.position == b"35" and b"junk" in fix.message


def test_texts_without_clean_are_not_rewritten() -> None:
    assert rewrite(b"select 'CLEAN CONNECTION TO ALL' /* clean connection to all */") is None


def test_a_reply_without_the_programs_first_info_is_left_alone() -> None:
    """Another statement's replies that attribution pointed at a CLEAN's slot (or a
    client's own INFO imitating the marker without this rewrite's token) are not the
    program's: tag, notices and errors pass as they are, and nothing is audited."""
    run = CleanPlan("CLEAN CONNECTION TO ALL", marker=AUDIT_MARKER + b"00ff ").start()
    forged = [(ord("S"), b"INFO"), (ord("M"), AUDIT_MARKER + b"caller")]
    assert run.notice(forged) is forged
    context = [(ord("M"), b"boom"), (ord("W"), b"SQL statement")]
    assert run.failed(context) is context
    assert run.completed(b"SELECT 1") == b"SELECT 1"
    assert not run.ran


def test_one_execution_shapes_its_replies() -> None:
    run = CleanPlan("CLEAN CONNECTION TO ALL").start()
    assert run.notice([(ord("S"), b"INFO"), (ord("M"), AUDIT_MARKER + b"caller")]) is None
    assert run.completed(b"DO") == CLEAN_CONNECTION_TAG
    audit = [(ord("S"), b"INFO"), (ord("M"), AUDIT_MARKER + b"terminated=3 skipped=1 junk")]
    assert run.notice(audit) is None  # consumed, never forwarded
    assert run.counts == {"terminated": 3, "skipped": 1}
    context = [(ord("M"), b"boom"), (ord("W"), b"PL/pgSQL function inline_code_block line 3")]
    assert run.failed(context) == [(ord("M"), b"boom")]
    plain = [(ord("M"), b"note")]
    assert run.notice(plain) is plain
    assert CleanPlan("x").start() is not CleanPlan("x").start()  # a fresh run per execution
