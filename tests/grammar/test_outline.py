"""The byte-level outline scanner against PostgreSQL's own scanner (pglast), the oracle.

Safety property: every statement start the outline reports is one PostgreSQL's scanner
also sees at top level, with the same extent and the same index among non-empty
statements; however the bytes are split into reads. Completeness (a CLEAN statement is
found) is checked where the text holds nothing the outline declines to judge.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast.parser import scan

from grammar import split_statements
from grammar.outline import (
    DECISION_ALLOWANCE,
    TRACKING_WORDS,
    OutlineScanner,
    lead_statements,
    mask_trail_bytes,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_VOCAB = [
    "clean", "CLEAN", "connection", "to", "all", "for", "d", ";", ";", " ", "\n", "\t",
    "'a;b'", "'it''s; clean'", "E'\\';clean connection'", "e'x\\\\'", "E'x'\n'\\';'",
    "$$;clean connection$$", "$x$;$y$;$x$", "foo$bar$", "$1", '"a;b"', '"x""y"',
    "-- c; clean connection\n", "/* ; */", "/* /* ; */ clean ; */", "-", "/", "*",
    "$", "$E'x'", "a$e'\\'", "select", "create", "function", "begin", "atomic", "end", "(", ")", "1", "e", "x",
    "'", '"', "$", "B'01'", "b'0''1'", "X'1'\n'\\';'", "U&'a'", "N'x'", "&", "deallocate", "prepare", "discard",
]  # fmt: skip


@st.composite
def texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from(_VOCAB), max_size=25))
    seps = draw(st.lists(st.sampled_from(["", " ", "\n"]), min_size=len(words)))
    return "".join(itertools.chain.from_iterable(zip(words, seps, strict=False)))


def _semicolon_in_parentheses(sql: str) -> bool:
    depth = 0
    for token in scan(sql):
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth = max(depth - 1, 0)
        elif token.name == "ASCII_59" and depth:
            return True
    return False


def _scan_in_pieces(data: bytes, rng: random.Random, words: frozenset[bytes]) -> OutlineScanner:
    scanner = OutlineScanner(words=words)
    buf = bytearray()
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        buf += data[pos : pos + step]
        pos += step
        scanner.feed(buf, len(buf))
    return scanner


def _summary(scanner: OutlineScanner) -> tuple:
    return (
        scanner.uncertain,
        scanner.done,
        [
            (lead.word, lead.start, lead.end, lead.index, lead.after_routine)
            for lead in scanner.leads
        ],
    )


def check_against_pglast(sql: str, seed: int = 0) -> None:
    data = sql.encode() + b"\0"
    whole = lead_statements(data, words=TRACKING_WORDS)
    pieces = _scan_in_pieces(data, random.Random(seed), TRACKING_WORDS)
    assert _summary(whole) == _summary(pieces), "the result depends on how reads split"
    assert whole.done
    reference = split_statements(sql)
    if whole.uncertain or reference is None:
        return
    if _semicolon_in_parentheses(sql):
        return  # a syntax error for the server whatever is rewritten (see outline's doc)
    non_empty = [s for s in reference if not s.is_empty]
    starts = {s.body_start: (i, s) for i, s in enumerate(non_empty)}
    for lead in whole.leads:
        if lead.after_routine:
            continue
        assert lead.start in starts, f"{lead} is not a statement start for PostgreSQL"
        index, statement = starts[lead.start]
        assert lead.index == index
        end = statement.end - 1 if sql[statement.end - 1 : statement.end] == ";" else statement.end
        assert lead.end == end
    if "create" not in sql.lower():
        found = {lead.start for lead in whole.leads if lead.word == b"clean"}
        for statement in reference:
            if statement.is_clean:
                assert statement.body_start in found, f"missed {statement}"


@SETTINGS
@given(texts(), st.integers(0, 1000))
def test_outline_agrees_with_postgresql_scanner(sql: str, seed: int) -> None:
    check_against_pglast(sql, seed)


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; clean connection to all for d; select 2",
        "select 'x;clean connection'; /* ; clean */ clean connection to all",
        "select E'\\'; clean connection to all force for database appdb; --'",
        "select E'x'\n'\\'; clean connection to all force for database d; --'",
        "select E'x' -- c\n  '\\'; clean connection to all; --'",
        "select $a$ ; clean $a$; clean connection to all",
        "select 1 /* ; /* clean connection to all; */ ; */; clean connection to all for x",
        "select foo$bar$; clean connection to all",
        ";; ;clean connection to all;",
        "clean connection to all",
        'select "a;""clean"; clean connection to all',
    ],
)
def test_cases(sql: str) -> None:
    for seed in range(5):
        check_against_pglast(sql, seed)


def test_escape_strings_with_standard_conforming_strings_off() -> None:
    sql = b"select 'it\\'s; clean connection to all force for database appdb; --'"
    assert not lead_statements(sql, standard_conforming_strings=False).leads
    # with it on, the backslash is an ordinary character and the string ends there
    assert lead_statements(sql).leads


@pytest.mark.parametrize(
    "sql",
    [
        b"select 1e'x'; clean connection to all",  # an E string to PG 15, an error to 16
        b"select E'x'\n\x0b'y'; clean connection to all",  # \v: whitespace from PG 16 only
        b"select 'unterminated; clean connection to all",
        b"select /* unterminated; clean connection to all",
    ],
)
def test_uncertain_texts_are_left_alone(sql: bytes) -> None:
    assert lead_statements(sql).uncertain


def test_dollar_after_a_digit_is_never_a_statement_start() -> None:
    # "1" then a dollar quote for PostgreSQL; "a1$" would be a word: Python does not guess
    scanner = lead_statements(b"select 1$a$; clean connection to all $a$")
    assert scanner.uncertain or not scanner.leads


@pytest.mark.parametrize("prefix", [b"b", b"B", b"x", b"X"])
def test_bit_strings_end_at_the_first_quote(prefix: bytes) -> None:
    # b'0''\'...: a bit string, then an escape string when standard_conforming_strings
    # is off (no doubled quote in bit strings), which holds the CLEAN text
    sql = b"select " + prefix + b"'0''\\'; clean connection to all; --'"
    assert not lead_statements(sql, standard_conforming_strings=False).leads
    # continued after a newline, a bit string stays one (its backslashes are plain)
    sql = b"select " + prefix + b"'0'\n'\\'; clean connection to all; --'"
    assert lead_statements(sql, standard_conforming_strings=False).leads


def test_u_and_string_with_standard_conforming_strings_off_is_uncertain() -> None:
    sql = b"select U&'\\0041'; clean connection to all"
    assert lead_statements(sql, standard_conforming_strings=False).uncertain
    assert not lead_statements(sql).uncertain


def test_statements_after_a_routine_are_marked() -> None:
    sql = b"create function f() returns int begin atomic select 1; clean connection to all; end"
    (lead,) = lead_statements(sql).leads
    assert lead.after_routine
    (lead,) = lead_statements(b"create table t(a int); clean connection to all").leads
    assert not lead.after_routine


def test_statements_are_counted_in_bulk() -> None:
    sql = b"select ';', 1 /* c */;" * 50_000 + b"clean connection to all"
    (lead,) = lead_statements(sql).leads
    assert lead.index == 50_000


def test_dense_texts_exhaust_the_allowance() -> None:
    """Where Python would have to look at almost every byte, the text is left alone."""
    for unit in (b";", b"';',", b"/*;*/;", b"clean;"):
        sql = unit * (DECISION_ALLOWANCE * 2) + b"; clean connection to all"
        scanner = lead_statements(sql)
        assert scanner.uncertain, unit


def test_text_ends_at_first_nul() -> None:
    scanner = lead_statements(b"select 1\0; clean connection to all")
    assert scanner.done and not scanner.leads and scanner.end == 8


def test_header_bytes_before_the_text_are_not_a_prefix() -> None:
    # The byte before the text is a length byte that happens to be "e": not an E prefix.
    data = b"Q\0\0\0e" + b"'\\'; clean connection to all; --'\0"
    scanner = OutlineScanner(start=5)
    scanner.feed(data, len(data))
    assert [lead.start for lead in scanner.leads] == [10]


def test_masking_keeps_offsets_and_hides_trail_bytes() -> None:
    text = "select E'表'; clean connection to all".encode("cp932")
    assert b"\\" in text  # 表 is 0x95 0x5C
    masked = mask_trail_bytes(text, "SJIS")
    assert len(masked) == len(text) and b"\\" not in masked
    assert [lead.start for lead in lead_statements(masked).leads] == [text.index(b"clean")]


def test_work_is_linear_in_the_bytes_fed() -> None:
    """A 2 MB literal arriving in 64 kB reads is not rescanned on every read."""
    body = b"select '" + b"x" * (2 << 20) + b"'; clean connection to all\0"
    scanner = OutlineScanner()
    buf = bytearray()
    for pos in range(0, len(body), 65536):
        buf += body[pos : pos + 65536]
        scanner.feed(buf, len(buf))
        # the scanner's position never falls behind the last read by more than a token
        assert scanner._pos >= len(buf) - 1 or scanner.done
    assert scanner.done and [lead.word for lead in scanner.leads] == [b"clean"]
