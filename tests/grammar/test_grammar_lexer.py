"""The lexer layer: character offsets from pglast, identifier values, scanner errors."""

from __future__ import annotations

import pytest

from grammar import GrammarError
from grammar.lexer import (
    Token,
    ascii_lower,
    check_uescape_char,
    decode_uident,
    identifier_value,
    scan,
    string_value,
    truncate_identifier,
)


def test_offsets_are_character_offsets_with_exclusive_end() -> None:
    sql = "select 'é'; clean connection to all for database \"ü\" /* ß */ -- ü\n x"
    tokens = scan(sql)
    assert [t.text for t in tokens] == [
        "select", "'é'", ";", "clean", "connection", "to", "all", "for", "database", '"ü"',
        "/* ß */", "-- ü", "x",
    ]  # fmt: skip
    for tok in tokens:
        assert sql[tok.start : tok.end] == tok.text
    assert [t.name for t in tokens][:3] == ["SELECT", "SCONST", "ASCII_59"]
    assert {t.name for t in tokens[10:12]} == {"C_COMMENT", "SQL_COMMENT"}


def test_astral_characters() -> None:
    sql = 'select "😀😀", 1'
    tok = scan(sql)[1]
    assert (tok.start, tok.end, tok.text) == (7, 11, '"😀😀"')


@pytest.mark.parametrize(
    ("sql", "message", "position"),
    [
        ("select 'abc", 'unterminated quoted string at or near "\'abc"', 8),
        ("select /* x", 'unterminated /* comment at or near "/* x"', 8),
        ('select ""', 'zero-length delimited identifier at or near """"', 8),
        ("select 1\x00", "invalid message format", 9),
    ],
)
def test_scan_errors(sql: str, message: str, position: int) -> None:
    with pytest.raises(GrammarError) as info:
        scan(sql)
    assert (info.value.message, info.value.position) == (message, position)


def test_ascii_lower_folds_ascii_only() -> None:
    assert ascii_lower("ÄBC") == "Äbc"
    assert ascii_lower("\u212a") == "\u212a"  # KELVIN SIGN: str.lower() would give "k"


def test_truncate_identifier_at_character_boundary() -> None:
    assert truncate_identifier("a" * 63) == "a" * 63
    assert truncate_identifier("a" * 64) == "a" * 63
    assert truncate_identifier("é" * 32) == "é" * 31  # 64 bytes -> 62, not half a char
    assert truncate_identifier("a" + "😀" * 16) == "a" + "😀" * 15  # 65 bytes -> 61


def _tok(text: str, name: str = "IDENT", start: int = 0) -> Token:
    return Token(name, "NO_KEYWORD", start, start + len(text), text)


def test_identifier_value() -> None:
    assert identifier_value(_tok("MixedCase")) == "mixedcase"
    assert identifier_value(_tok('"Mixed ""Case"""')) == 'Mixed "Case"'
    assert identifier_value(_tok('"' + "X" * 70 + '"')) == "X" * 63


@pytest.mark.parametrize(
    ("text", "escape", "value"),
    [
        ('U&"d\\0061t\\+000061"', "\\", "data"),
        ('U&"a\\\\b"', "\\", "a\\b"),
        ('U&"!00e9!!"', "!", "é!"),
        ('U&"\\D83D\\DE00"', "\\", "😀"),
        ('U&"q""x"', "\\", 'q"x'),
    ],
)
def test_decode_uident(text: str, escape: str, value: str) -> None:
    assert decode_uident(_tok(text, "UIDENT"), escape) == value


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ('U&"d\\006xt"', "invalid Unicode escape", 5),
        ('U&"\\0000"', "invalid Unicode escape value", 4),
        ('U&"\\+110000"', "invalid Unicode escape value", 4),
        ('U&"ab\\DC00"', "invalid Unicode surrogate pair", 6),
        ('U&"\\D800x"', "invalid Unicode surrogate pair", 9),
        ('U&"\\D800"', "invalid Unicode surrogate pair", 9),
        ('U&"\\D800\\0041"', "invalid Unicode surrogate pair", 9),
        ('U&"\\"', "invalid Unicode escape", 4),
    ],
)
def test_decode_uident_errors(text: str, message: str, position: int) -> None:
    with pytest.raises(GrammarError) as info:
        decode_uident(_tok(text, "UIDENT"))
    assert (info.value.message, info.value.position) == (message, position)


def test_uescape_character_rules() -> None:
    assert check_uescape_char("!")
    assert check_uescape_char("g")
    for bad in ("a", "F", "0", "+", "'", '"', " ", "\t", "!!", "", "é"):
        assert not check_uescape_char(bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("'!'", "!"),
        ("''''", "'"),
        ("$$!$$", "!"),
        ("$t$x$t$", "x"),
        ("E'\\\\'", "\\"),
        ("e'\\x21'", "!"),
        ("E'\\041'", "!"),
        ("'a'\n'b'", "ab"),
    ],
)
def test_string_value(text: str, value: str) -> None:
    assert string_value(_tok(text, "SCONST")) == value
