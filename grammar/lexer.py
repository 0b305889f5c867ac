"""Tokens of a query string, from PostgreSQL's own scanner (``pglast.parser.scan``).

Contract:

* :func:`scan` returns every token of the string, comments included, in order. Offsets are
  Python ``str`` (character) offsets, ``end`` exclusive. pglast 8 already converts the
  scanner's UTF-8 byte offsets to character indexes (its ``Displacements`` helper) and
  reports ``end`` as the index of the token's last character, so ``end + 1`` is used here;
  ``tests/grammar/test_grammar_lexer.py`` pins this down with non-ASCII input.
* A string the scanner rejects (unterminated quote or comment, zero-length ``""``), or one
  PostgreSQL could never receive (a NUL character, a lone surrogate) raises
  :class:`~grammar.errors.GrammarError`.
* Identifier values follow PostgreSQL: unquoted names fold ASCII ``A-Z`` only
  (``downcase_identifier`` for a multibyte server encoding), quoted ones drop the quotes and
  undouble ``""``, ``U&"..."`` ones decode ``\\XXXX`` / ``\\+XXXXXX`` escapes
  (``str_udeescape``), and every identifier is truncated to 63 bytes of UTF-8 at a
  character boundary (``truncate_identifier``, NAMEDATALEN 64), quoted ones included.
"""

from __future__ import annotations

from typing import NamedTuple

from pglast.parser import ParseError
from pglast.parser import Token as RawToken
from pglast.parser import scan as _pg_scan

from grammar.errors import GrammarError

#: NAMEDATALEN - 1: the longest identifier PostgreSQL keeps, in bytes.
MAX_IDENTIFIER_BYTES = 63

COMMENT_NAMES = frozenset({"C_COMMENT", "SQL_COMMENT"})
#: Keyword kinds PostgreSQL's ``ColId`` accepts besides plain identifiers.
COLID_KEYWORD_KINDS = frozenset({"UNRESERVED_KEYWORD", "COL_NAME_KEYWORD"})

_HEX = frozenset("0123456789abcdefABCDEF")
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_SCANNER_SPACE = frozenset(" \t\n\r\f\v")


class Token(NamedTuple):
    """One scanner token: pglast's token ``name`` (``IDENT``, ``SCONST``, ``ASCII_59`` for
    ``;``, ``TO``...), keyword ``kind`` (``NO_KEYWORD``, ``UNRESERVED_KEYWORD``...),
    character offsets ``[start, end)`` and the source ``text``.

    Tokens of :mod:`grammar.og_scan` may also carry the decoded name of a quoted identifier
    (``value``), and a scanner ``error`` (a last token with name ``ERROR``)."""

    name: str
    kind: str
    start: int
    end: int
    text: str
    value: str | None = None
    error: GrammarError | None = None


def scan(sql: str) -> list[Token]:
    """All tokens of ``sql`` (comments included), or :class:`GrammarError` if unscannable."""
    return [
        Token(t.name, t.kind, t.start, t.end + 1, sql[t.start : t.end + 1]) for t in scan_raw(sql)
    ]


def scan_raw(sql: str) -> list[RawToken]:
    """pglast's own tokens (``end`` inclusive), for hot loops that convert few of them.

    Same errors as :func:`scan`.
    """
    if "\x00" in sql:
        raise GrammarError("invalid message format", sql.index("\x00") + 1)
    try:
        raw = _pg_scan(sql)
    except ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else 0
        raise GrammarError(str(message), int(index) + 1) from None
    except UnicodeEncodeError as exc:
        raise GrammarError("invalid byte sequence for encoding UTF8", exc.start + 1) from None
    return raw


def from_raw(sql: str, raw: RawToken) -> Token:
    """Convert one of :func:`scan_raw`'s tokens."""
    return Token(raw.name, raw.kind, raw.start, raw.end + 1, sql[raw.start : raw.end + 1])


def ascii_lower(text: str) -> str:
    """Lower-case ASCII ``A-Z`` only, as PostgreSQL does for keywords and identifiers."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def is_word(token: Token, word: str) -> bool:
    """True if ``token`` is the unquoted word ``word`` (given in lower case).

    A quoted identifier never matches: its text starts with ``"``.
    """
    return len(token.text) == len(word) and ascii_lower(token.text) == word


def is_colid(token: Token) -> bool:
    """True if ``token`` can be a ``ColId``: an identifier, unreserved or col_name keyword."""
    return token.name in ("IDENT", "UIDENT") or token.kind in COLID_KEYWORD_KINDS


def truncate_identifier(name: str) -> str:
    """Clip ``name`` to 63 bytes of UTF-8 at a character boundary (``truncate_identifier``)."""
    if len(name) <= MAX_IDENTIFIER_BYTES // 4:
        return name
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_IDENTIFIER_BYTES:
        return name
    return encoded[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore")


def identifier_value(token: Token) -> str:
    """The name an ``IDENT`` or ColId keyword token stands for (not for ``UIDENT``)."""
    text = token.text
    if text.startswith('"'):
        return truncate_identifier(text[1:-1].replace('""', '"'))
    return truncate_identifier(ascii_lower(text))


def check_uescape_char(value: str) -> bool:
    """PostgreSQL's ``check_uescapechar`` plus its single-byte requirement."""
    return (
        len(value) == 1
        and value.isascii()
        and value not in _HEX
        and value not in "+'\""
        and value not in _SCANNER_SPACE
    )


def decode_uident(token: Token, escape: str = "\\") -> str:
    """Decode a ``U&"..."`` identifier token with escape character ``escape``.

    Mirrors ``str_udeescape``: error positions point at the offending escape (or, for an
    unfinished surrogate pair, at whatever follows the first half), counted in the
    undoubled body plus 3 for ``U&"``, exactly as the server counts them.
    """
    body = token.text[3:-1].replace('""', '"')
    base = token.start + 3 + 1  # 1-based position of body[0]
    out: list[str] = []
    pair_first = 0
    i, n = 0, len(body)

    def fail(message: str, at: int) -> GrammarError:
        return GrammarError(message, base + at)

    while i < n:
        ch = body[i]
        if ch != escape:
            if pair_first:
                raise fail("invalid Unicode surrogate pair", i)
            out.append(ch)
            i += 1
            continue
        if i + 1 < n and body[i + 1] == escape:
            if pair_first:
                raise fail("invalid Unicode surrogate pair", i)
            out.append(escape)
            i += 2
            continue
        if i + 4 < n and all(c in _HEX for c in body[i + 1 : i + 5]):
            code, width = int(body[i + 1 : i + 5], 16), 5
        elif i + 7 < n and body[i + 1] == "+" and all(c in _HEX for c in body[i + 2 : i + 8]):
            code, width = int(body[i + 2 : i + 8], 16), 8
        else:
            raise fail("invalid Unicode escape", i)
        if not 0 < code <= 0x10FFFF:
            raise fail("invalid Unicode escape value", i)
        if pair_first:
            if 0xDC00 <= code <= 0xDFFF:
                code = 0x10000 + ((pair_first - 0xD800) << 10) + (code - 0xDC00)
                pair_first = 0
            else:
                raise fail("invalid Unicode surrogate pair", i)
        elif 0xDC00 <= code <= 0xDFFF:
            raise fail("invalid Unicode surrogate pair", i)
        if 0xD800 <= code <= 0xDBFF:
            pair_first = code
        else:
            out.append(chr(code))
        i += width
    if pair_first:
        raise fail("invalid Unicode surrogate pair", n)
    return truncate_identifier("".join(out))


def string_value(token: Token) -> str | None:
    """The value of an ``SCONST`` token, or None for a form not decoded here.

    Decoded: ``'...'`` (with ``''`` and whitespace-with-newline continuation, as the scanner
    joins them), ``$tag$...$tag$`` and ``E'...'`` with the common backslash escapes. Used
    only for the ``UESCAPE`` character, which must be a single character anyway.
    """
    text = token.text
    if text.startswith("$"):
        tag_end = text.index("$", 1) + 1
        return text[tag_end : len(text) - tag_end]
    if text[:1] in "eE" and text[1:2] == "'":
        return _decode_e_string(text[2:-1]) if "\n" not in text else None
    if not text.startswith("'"):
        return None
    parts: list[str] = []
    for piece in _split_continuations(text):
        parts.append(piece[1:-1].replace("''", "'"))
    return "".join(parts)


def _split_continuations(text: str) -> list[str]:
    """Split ``'a'<ws+newline>'b'`` into its quoted pieces."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] != "'":
            i += 1
            continue
        j = i + 1
        while j < n:
            if text[j] == "'":
                if j + 1 < n and text[j + 1] == "'":
                    j += 2
                    continue
                break
            j += 1
        pieces.append(text[i : j + 1])
        i = j + 1
    return pieces


_E_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _decode_e_string(body: str) -> str | None:
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "'":
            out.append("'")
            i += 2
        elif ch == "\\" and i + 1 < n:
            nxt = body[i + 1]
            if nxt in _E_SIMPLE:
                out.append(_E_SIMPLE[nxt])
                i += 2
            elif nxt == "x" and i + 2 < n and body[i + 2] in _HEX:
                j = i + 3 if i + 3 < n and body[i + 3] in _HEX else i + 2
                out.append(chr(int(body[i + 2 : j + 1], 16)))
                i = j + 1
            elif nxt in "01234567":
                j = i + 1
                while j < min(i + 4, n) and body[j] in "01234567":
                    j += 1
                out.append(chr(int(body[i + 1 : j], 8) & 0xFF))
                i = j
            elif nxt in "uU":
                return None  # \u escapes are not decoded (documented limitation)
            else:
                out.append(nxt)
                i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
