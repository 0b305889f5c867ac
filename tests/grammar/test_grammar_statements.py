"""Statement spans of whole query strings, and the byte pre-test."""

from __future__ import annotations

import itertools

import pytest

from grammar import (
    CleanConnection,
    GrammarError,
    Statement,
    find_clean_statements,
    might_contain_clean,
    split_statements,
)


def spans(sql: str) -> list[str]:
    result = split_statements(sql)
    assert result is not None
    return [sql[s.start : s.end] for s in result]


def bodies(sql: str) -> list[str]:
    result = split_statements(sql)
    assert result is not None
    return [sql[s.body_start : s.body_end] for s in result]


def assert_tiles(sql: str, result: list[Statement]) -> None:
    assert result[0].start == 0
    assert result[-1].end == len(sql)
    for a, b in itertools.pairwise(result):
        assert a.end == b.start
    for s in result:
        assert s.start <= s.body_start <= s.body_end <= s.end


class TestMightContainClean:
    @pytest.mark.parametrize(
        "body",
        [
            b"CLEAN CONNECTION TO ALL\x00",
            b"clean connection to all",
            b"select 1; cLeAn\n/*x*/ ConnecTion to all for db\x00",
            b"\xff\xfe clean \x00 connection",
            b"CLEAN\x00",  # not CLEAN CONNECTION, but openGauss's error is the proxy's
            b"select 1; clean table t\x00",
            b"select clean from t\x00",  # a false positive: the outline finds no lead
        ],
    )
    def test_true(self, body: bytes) -> None:
        assert might_contain_clean(body)

    @pytest.mark.parametrize(
        "body",
        [b"", b"select 1\x00", b"connection", b"cle an connection", b"c\x00lean"],
    )
    def test_false(self, body: bytes) -> None:
        assert not might_contain_clean(body)


class TestSplit:
    def test_empty_string_is_one_empty_span(self) -> None:
        (s,) = split_statements("")  # type: ignore[misc]
        assert (s.start, s.end, s.body_start, s.body_end, s.is_empty) == (0, 0, 0, 0, True)

    def test_simple(self) -> None:
        sql = "select 1; select 2 ;select 3"
        assert spans(sql) == ["select 1;", " select 2 ;", "select 3"]
        assert bodies(sql) == ["select 1", "select 2", "select 3"]

    def test_trailing_semicolon_has_no_extra_span(self) -> None:
        assert spans("select 1;") == ["select 1;"]
        assert spans("select 1; ") == ["select 1;", " "]

    def test_empty_statements(self) -> None:
        sql = "select 1;; /* only a comment */ ; -- c\n"
        result = split_statements(sql)
        assert result is not None
        assert [s.is_empty for s in result] == [False, True, True, True]
        assert_tiles(sql, result)

    def test_comments_after_last_token_are_not_body(self) -> None:
        sql = "/* a */ select 1 /* b */ -- c\n; select 2 -- d"
        assert bodies(sql) == ["select 1", "select 2"]

    def test_dollar_quotes_and_strings_do_not_split(self) -> None:
        sql = (
            "do $fn$ begin raise notice 'clean connection to all;'; end $fn$;"
            " select $$;clean connection to all;$$, E'\\';clean connection', 'a;b';"
            " clean connection to all for d"
        )
        result = split_statements(sql)
        assert result is not None
        assert len(result) == 3
        assert [s.is_clean for s in result] == [False, False, True]
        assert result[2].clean == CleanConnection("all", database="d")

    def test_nested_comments(self) -> None:
        sql = "select 1 /* ; /* clean connection to all; */ ; */; clean connection to all for x"
        result = split_statements(sql)
        assert result is not None
        assert len(result) == 2
        assert result[1].clean == CleanConnection("all", database="x")

    def test_begin_atomic_body(self) -> None:
        routine = (
            "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql\n"
            "BEGIN ATOMIC\n"
            "  SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n"
            "  SELECT a + 1;\n"
            "END;"
        )
        sql = routine + " clean connection to all for d; create procedure p() begin atomic "
        sql += "select 1; end; select 2"
        assert spans(sql) == [
            routine,
            " clean connection to all for d;",
            " create procedure p() begin atomic select 1; end;",
            " select 2",
        ]

    def test_begin_outside_routine_splits(self) -> None:
        assert spans("begin; clean connection to all for d; end") == [
            "begin;",
            " clean connection to all for d;",
            " end",
        ]

    def test_semicolon_inside_parentheses_does_not_split(self) -> None:
        sql = "select (1; clean connection to all for d)"
        result = split_statements(sql)
        assert result is not None
        assert len(result) == 1
        assert not result[0].is_clean

    @pytest.mark.parametrize(
        "sql",
        ["select 'abc", "select /* x", 'select "ab', "select $$ x", 'select ""', "a\x00b"],
    )
    def test_unscannable(self, sql: str) -> None:
        assert split_statements(sql) is None
        assert find_clean_statements(sql) == []

    def test_non_ascii_offsets_are_characters(self) -> None:
        sql = "select 'é'; clean connection to all for database \"ü\" /* ß */; select 'ü' 2"
        result = split_statements(sql)
        assert result is not None
        assert spans(sql)[1] == ' clean connection to all for database "ü" /* ß */;'
        assert bodies(sql)[1] == 'clean connection to all for database "ü"'
        assert result[1].clean == CleanConnection("all", database="ü")


class TestCleanDetection:
    @pytest.mark.parametrize(
        "sql",
        [
            "select 'clean connection to all'",
            "-- clean connection to all\nselect 1",
            '"clean" connection to all',
            "select clean, connection from t",
            "clean table t",
            "clean",
            "cleaning connection to all",
            "/* clean connection to all */",
        ],
    )
    def test_pass_through(self, sql: str) -> None:
        result = split_statements(sql)
        assert result is not None
        assert not any(s.is_clean for s in result)
        assert find_clean_statements(sql) == []

    def test_several_clean_statements(self) -> None:
        sql = (
            "select 1; CLEAN CONNECTION TO ALL FOR a; insert into t values (';');\n"
            "clean connection to node (n1) to user u"
        )
        found = find_clean_statements(sql)
        assert [s.clean for s in found] == [
            CleanConnection("all", database="a"),
            CleanConnection("node", ("n1",), user="u"),
        ]
        assert sql[found[0].body_start : found[0].body_end] == "CLEAN CONNECTION TO ALL FOR a"

    def test_error_positions_are_over_the_whole_string(self) -> None:
        sql = "select 'é';\nclean connection to all force check; select 2"
        (stmt,) = find_clean_statements(sql)
        assert stmt.clean is None
        assert stmt.error == GrammarError('syntax error at or near "check"', 43)
        assert sql[42:47] == "check"

    def test_unfinished_statement_before_semicolon_fails_at_semicolon(self) -> None:
        sql = "clean connection to all for ; select 1"
        (stmt,) = find_clean_statements(sql)
        assert stmt.error == GrammarError('syntax error at or near ";"', 29)

    def test_unfinished_last_statement_fails_at_end_of_input(self) -> None:
        sql = "select 1; clean connection to  -- c\n"
        (stmt,) = find_clean_statements(sql)
        assert stmt.error == GrammarError("syntax error at end of input", len(sql) + 1)
