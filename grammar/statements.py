"""Statement spans of a simple-Query string, and the CLEAN CONNECTION statements in it.

Contract:

* :func:`might_contain_clean` is the hot-path byte pre-test: False means the body certainly
  holds no ``CLEAN CONNECTION`` statement (both words must appear, in any ASCII case).
* :func:`split_statements` cuts the string at each top-level ``;`` into spans that tile it
  exactly (each span includes its ``;``; whitespace and comments before a statement belong
  to it). ``;`` inside a SQL-standard routine body (``CREATE [OR REPLACE] FUNCTION|PROCEDURE
  ... BEGIN ATOMIC ... END``, with ``CASE ... END`` nested) or inside parentheses does not
  split: this is psql's own heuristic (``psqlscan.l``). Strings, dollar quotes and comments
  are single scanner tokens, so their content never splits.
* A span is a CLEAN statement when its first two tokens are the unquoted word ``clean`` and
  the keyword ``CONNECTION``; it then carries the parsed value or the
  :class:`~grammar.errors.GrammarError` (positions over the whole string). Any other span
  is pass-through and is never parsed.
* Offsets are ``str`` (character) offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from grammar.clean_connection import CleanConnection, parse_tokens
from grammar.errors import GrammarError
from grammar.lexer import COMMENT_NAMES, Token, ascii_lower, is_word, scan


def might_contain_clean(body: bytes) -> bool:
    """Cheap test on a raw Query/Parse body (any client encoding, NULs allowed).

    False => certainly no CLEAN CONNECTION statement; True => worth scanning.
    """
    lowered = body.lower()
    return b"clean" in lowered and b"connection" in lowered


@dataclass(frozen=True, slots=True)
class Statement:
    """One span ``sql[start:end]`` of a query string.

    ``body_start``/``body_end`` delimit the statement's tokens (first to last, excluding a
    trailing ``;`` and comments around); for an empty statement both equal ``start``.
    ``clean`` is set for a valid CLEAN CONNECTION statement, ``error`` for an invalid one.
    """

    start: int
    end: int
    body_start: int
    body_end: int
    is_empty: bool
    clean: CleanConnection | None = None
    error: GrammarError | None = None

    @property
    def is_clean(self) -> bool:
        """True if this span is a CLEAN CONNECTION statement, valid or not."""
        return self.clean is not None or self.error is not None


_ROUTINE_WORDS = {"create": "c", "function": "f", "procedure": "p", "or": "o", "replace": "r"}


def split_statements(sql: str) -> list[Statement] | None:
    """Spans of ``sql`` (at least one; ``[Statement(0, 0, ...)]`` for ``""``).

    None when PostgreSQL's scanner rejects the string (unterminated quote or comment...):
    the caller passes it through untouched and lets the server report the error.
    """
    try:
        tokens = scan(sql)
    except GrammarError:
        return None
    eof_position = len(sql) + 1
    statements: list[Statement] = []
    start = 0
    body: list[Token] = []
    # psql's BEGIN ATOMIC heuristic state, reset at each statement boundary.
    paren_depth = begin_depth = word_count = 0
    prefix = ["", "", "", ""]

    for tok in tokens:
        name = tok.name
        if name in COMMENT_NAMES:
            continue
        if name == "ASCII_59" and paren_depth == 0 and begin_depth == 0:
            statements.append(_statement(sql, start, tok.end, body, tok, eof_position))
            start = tok.end
            body = []
            word_count = 0
            prefix = ["", "", "", ""]
            continue
        body.append(tok)
        if name == "ASCII_40":
            paren_depth += 1
        elif name == "ASCII_41":
            if paren_depth:
                paren_depth -= 1
        elif tok.kind != "NO_KEYWORD" or (name == "IDENT" and tok.text[0] != '"'):
            word = ascii_lower(tok.text)
            if word_count < 4:
                prefix[word_count] = _ROUTINE_WORDS.get(word, "")
            word_count += 1
            if (
                paren_depth == 0
                and prefix[0] == "c"
                and (
                    prefix[1] in ("f", "p")
                    or (prefix[1] == "o" and prefix[2] == "r" and prefix[3] in ("f", "p"))
                )
            ):
                if word == "begin":
                    begin_depth += 1
                elif word == "case":
                    if begin_depth:
                        begin_depth += 1
                elif word == "end" and begin_depth:
                    begin_depth -= 1

    if start < len(sql) or not statements:
        statements.append(_statement(sql, start, len(sql), body, None, eof_position))
    return statements


def _statement(
    sql: str,
    start: int,
    end: int,
    body: list[Token],
    semicolon: Token | None,
    eof_position: int,
) -> Statement:
    if not body:
        return Statement(start, end, start, start, True)
    clean = error = None
    if len(body) >= 2 and body[1].name == "CONNECTION" and is_word(body[0], "clean"):
        tokens = [*body, semicolon] if semicolon is not None else body
        try:
            clean = parse_tokens(sql, tokens, eof_position)
        except GrammarError as exc:
            error = exc
    return Statement(start, end, body[0].start, body[-1].end, False, clean, error)


def find_clean_statements(sql: str) -> list[Statement]:
    """The CLEAN CONNECTION spans of :func:`split_statements` (``[]`` if none/unscannable)."""
    return [s for s in split_statements(sql) or () if s.is_clean]
