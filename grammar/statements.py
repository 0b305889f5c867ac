"""Statement spans of a simple-Query string, and the CLEAN CONNECTION statements in it.

Contract:

* :func:`might_contain_clean` is the hot-path byte pre-test: False means the body certainly
  holds no statement starting with the word ``clean`` (any ASCII case); every such
  statement is the proxy's, valid or not (an invalid one gets openGauss's error).
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

from grammar.clean_connection import CleanConnection, parse_statement
from grammar.errors import GrammarError
from grammar.lexer import RawToken, ascii_lower, scan_raw


def might_contain_clean(body: bytes) -> bool:
    """Cheap test on a raw Query/Parse body (any client encoding, NULs allowed).

    False => certainly no statement starting with ``clean``; True => worth scanning.
    """
    # bytes.find is measurably cheaper than the ``in`` operator on CPython 3.11.
    return body.lower().find(b"clean") >= 0


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


# psql's routine-prefix letters (``psqlscan.l``); these words are all keywords to pglast.
_ROUTINE_WORDS = {"CREATE": "c", "FUNCTION": "f", "PROCEDURE": "p", "OR": "o", "REPLACE": "r"}
_BLOCK_WORDS = frozenset({"BEGIN_P", "CASE", "END_P"})


def split_statements(sql: str) -> list[Statement] | None:
    """Spans of ``sql`` (at least one; ``[Statement(0, 0, ...)]`` for ``""``).

    None when PostgreSQL's scanner rejects the string (unterminated quote or comment...):
    the caller passes it through untouched and lets the server report the error.
    """
    try:
        tokens = scan_raw(sql)
    except GrammarError:
        return None
    statements: list[Statement] = []
    start = 0  # span start
    first = -1  # index in tokens of the statement's first real token, -1 if none yet
    second = -1
    last = -1  # index of its last real token
    # psql's BEGIN ATOMIC heuristic state, reset at each statement boundary.
    paren_depth = begin_depth = word_count = 0
    prefix = ["", "", "", ""]
    routine = False

    for index, tok in enumerate(tokens):
        name = tok.name
        if name == "C_COMMENT" or name == "SQL_COMMENT":
            continue
        if name == "ASCII_59" and paren_depth == 0 and begin_depth == 0:
            end = tok.end + 1
            statements.append(_statement(sql, tokens, start, end, first, second, last, index))
            start = end
            first = second = last = -1
            word_count = 0
            prefix = ["", "", "", ""]
            routine = False
            continue
        if first < 0:
            first = index
        elif second < 0:
            second = index
        last = index
        if name == "ASCII_40":
            paren_depth += 1
        elif name == "ASCII_41":
            if paren_depth:
                paren_depth -= 1
        elif tok.kind != "NO_KEYWORD" or (name == "IDENT" and sql[tok.start] != '"'):
            # An unquoted word: psql counts it, and tracks BEGIN/CASE/END in routines.
            if word_count < 4:
                prefix[word_count] = _ROUTINE_WORDS.get(name, "")
                routine = prefix[0] == "c" and (
                    prefix[1] in ("f", "p")
                    or (prefix[1] == "o" and prefix[2] == "r" and prefix[3] in ("f", "p"))
                )
            word_count += 1
            if routine and paren_depth == 0 and name in _BLOCK_WORDS:
                if name == "BEGIN_P":
                    begin_depth += 1
                elif name == "CASE":
                    if begin_depth:
                        begin_depth += 1
                elif begin_depth:
                    begin_depth -= 1

    if start < len(sql) or not statements:
        statements.append(
            _statement(sql, tokens, start, len(sql), first, second, last, len(tokens))
        )
    return statements


def _statement(
    sql: str,
    tokens: list[RawToken],
    start: int,
    end: int,
    first: int,
    second: int,
    last: int,
    stop: int,
) -> Statement:
    """The span ``[start, end)`` whose real tokens are ``tokens[first..last]``; ``stop`` is
    the index of its terminating ``;`` (or ``len(tokens)``)."""
    if first < 0:
        return Statement(start, end, start, start, True)
    body_start, body_end = tokens[first].start, tokens[last].end + 1
    head = tokens[first]
    if (
        second < 0
        or tokens[second].name != "CONNECTION"
        or head.name != "IDENT"
        or head.end - head.start != 4
        or ascii_lower(sql[head.start : head.end + 1]) != "clean"
    ):
        return Statement(start, end, body_start, body_end, False)
    # Read again as openGauss's scanner reads it ("#" in names, its keywords, its errors);
    # statement boundaries are the same for both scanners.
    stop_at = tokens[stop].end + 1 if stop < len(tokens) else end
    try:
        clean = parse_statement(sql, tokens[first].start, stop_at)
    except GrammarError as exc:
        return Statement(start, end, body_start, body_end, False, None, exc)
    return Statement(start, end, body_start, body_end, False, clean)


def find_clean_statements(sql: str) -> list[Statement]:
    """The CLEAN CONNECTION spans of :func:`split_statements` (``[]`` if none/unscannable)."""
    return [s for s in split_statements(sql) or () if s.is_clean]
