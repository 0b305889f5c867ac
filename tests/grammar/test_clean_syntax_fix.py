"""The case files through the proxy's rewrite (``proxy.clean.rewrite_text``): every
rejected statement, inside a multi-statement string, gives a SyntaxFix that replaces the
server's error at its CLEAN token with openGauss's message and position (scanner errors
in texts the outline gives up on included); every accepted one is rewritten."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammar.outline import OutlineScanner
from proxy.clean import rewrite_text
from proxy.streams import Rewrite
from tests.grammar.case_files import load_cases

PREFIX = "select 'é'; "  # a multibyte character before: positions are characters


def rewrite(sql: str) -> Rewrite | None:
    buf = sql.encode() + b"\0"
    scan = OutlineScanner()
    scan.feed(buf, len(buf))
    return rewrite_text(
        buf, 0, len(buf) - 1, scan, encoding="UTF8", settled=True, wait_seconds=1, check_seconds=1
    )


def _one_statement(sql: str) -> bool:
    """Cases whose only ``;`` (if any) ends them (elsewhere a ``;`` splits the string),
    and whose first word is ``clean`` to PostgreSQL too (``clean$`` is one word: the
    server's own error there is already openGauss's)."""
    return ";" not in sql.rstrip().rstrip(";") and not sql.startswith("clean$")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [c for c in load_cases("reject.sql", "error") if _one_statement(c.values[0])],
)
def test_rejected_statement_gets_opengauss_error(sql: str, expected: str) -> None:
    message, position = expected.rsplit(" @ ", 1)
    result = rewrite(PREFIX + sql)
    assert result is not None
    assert result.sql is None  # the text goes unchanged: the server rejects it whole
    fix = result.syntax_fix
    assert fix is not None
    assert fix.server_position == str(len(PREFIX) + 1).encode()
    assert fix.message == message.encode()
    assert fix.position == str(int(position) + len(PREFIX)).encode()


@pytest.mark.parametrize(("sql", "expected"), load_cases("accept.sql", "expect"))
def test_accepted_statement_is_rewritten(sql: str, expected: str) -> None:
    result = rewrite(PREFIX + sql)
    assert result is not None
    assert result.syntax_fix is None
    assert result.sql is not None and b"DO $pgdp_clean$" in result.sql


def test_first_clean_is_where_the_server_fails() -> None:
    """A valid CLEAN before the invalid one: the server fails at the first CLEAN token."""
    sql = "clean connection to all; select 1; CLEAN CONNECTIONS"
    fix = rewrite(sql).syntax_fix
    assert (fix.server_position, fix.message, fix.position) == (
        b"1",
        b'syntax error at or near "CONNECTIONS"',
        str(sql.index("CONNECTIONS") + 1).encode(),
    )


def test_valid_clean_before_an_unterminated_quote_gets_no_fix() -> None:
    """openGauss would report the unterminated string; the proxy cannot be sure of the
    text after it, so the server's own error stays."""
    result = rewrite("clean connection to all; select 'x")
    assert result is None or result.syntax_fix is None


def test_dollar_after_a_digit_is_passed_through() -> None:
    """``2024$q`` reads differently across PostgreSQL versions (``$q$`` may open a dollar
    quote): certain or nothing, the statement goes unchanged and gets no fix."""
    result = rewrite("clean connection to all for sales#2024$q")
    assert result is None or (result.sql is None and result.syntax_fix is None)


_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(_CHARS, max_size=60), st.sampled_from(["clean ", "CLEAN CONNECTION ", "clean"]))
def test_any_clean_text_is_rewritten_or_fixed_or_passed(text: str, head: str) -> None:
    sql = PREFIX + head + text
    result = rewrite(sql)
    if result is not None and result.syntax_fix is not None:
        fix = result.syntax_fix
        assert fix.server_position == str(len(PREFIX) + 1).encode()
        assert 1 <= int(fix.position) <= len(sql) + 1
        assert result.sql is None
