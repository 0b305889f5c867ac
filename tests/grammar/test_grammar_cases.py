"""Table-driven CLEAN CONNECTION cases: accepted forms and rejections with positions."""

from __future__ import annotations

import pytest

from grammar import GrammarError, find_clean_statements, parse_clean_connection
from tests.grammar.case_files import load_cases


@pytest.mark.parametrize(("sql", "expected"), load_cases("accept.sql", "expect"))
def test_accept(sql: str, expected: str) -> None:
    value = parse_clean_connection(sql)
    assert value.to_sql() == expected
    assert parse_clean_connection(value.to_sql()) == value


@pytest.mark.parametrize(("sql", "expected"), load_cases("accept.sql", "expect"))
def test_accept_inside_a_multi_statement_string(sql: str, expected: str) -> None:
    prefix = "select 'clean connection'; "
    body = sql.rstrip().rstrip(";")
    whole = f"{prefix}{body}\n;select 2"
    (stmt,) = find_clean_statements(whole)
    assert stmt.error is None
    assert stmt.clean is not None
    assert stmt.clean.to_sql() == expected


@pytest.mark.parametrize(("sql", "expected"), load_cases("reject.sql", "error"))
def test_reject(sql: str, expected: str) -> None:
    message, position = expected.rsplit(" @ ", 1)
    with pytest.raises(GrammarError) as info:
        parse_clean_connection(sql)
    assert (info.value.message, info.value.position) == (message, int(position))
    assert info.value.sqlstate == "42601"
