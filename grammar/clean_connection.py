"""The openGauss ``CLEAN CONNECTION`` statement: value type and recursive-descent parser.

Accepted syntax (openGauss ``gram.y``, rule ``CleanConnStmt``)::

    CLEAN CONNECTION
          TO { COORDINATOR ( nodename [, ...] ) | NODE ( nodename [, ...] )
             | ALL [ CHECK ] [ FORCE ] }
          [ FOR [ DATABASE ] dbname ]
          [ TO [ USER ] username ] [ ; ]

Names are ``ColId`` (``database_name``, ``RoleId`` and ``pgxcnode_name`` all are): a plain,
quoted or ``U&"..."`` identifier, or a word openGauss's ``unreserved_keyword`` or
``col_name_keyword`` lists (:mod:`grammar.og_keywords`, openGauss's kwlist.h). As in the
bison grammar, ``FOR DATABASE`` followed by something that cannot be a name reads
``DATABASE`` as the database name (``FOR DATABASE TO bob``: database ``database``).

Choices, each mirroring what openGauss does with the same text:

* Tokens: :mod:`grammar.og_scan` (openGauss's scan.l: ``#`` and ``$`` inside names,
  ``9lives`` is two tokens, ``UESCAPE`` inside the scanner). A scanner error is reported
  only when the parser reaches its token, or when openGauss's lookahead filter
  (parser.cpp ``base_yylex``) reads that far ahead; two-word tokens of that filter
  (``NULLS FIRST``, ``FORCE INDEX``, ``PARTITION FOR``...) fail at their second word.
* Identifier values: ASCII-only case folding, ``""`` undoubled, ``U&`` escapes,
  truncation to 63 UTF-8 bytes at a character boundary, without the server's NOTICE.
* Errors are ``syntax error at or near "<token text as written>"`` at the token where no
  valid continuation exists. When the tokens run out the error is ``syntax error at end
  of input`` at the ``eof_position`` given by the caller: the length of the whole query
  string plus one, as the server reports it. In a multi-statement string the terminating
  ``;`` is an ordinary token, so an unfinished statement there fails ``at or near ";"``.
* :func:`parse_tokens` also takes pglast's tokens (PostgreSQL's reading, kept for
  callers that have them): words are then still classified with openGauss's table, and a
  ``U&"..." UESCAPE 'c'`` group is decoded as PostgreSQL 13+ does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grammar.errors import GrammarError
from grammar.lexer import (
    MAX_IDENTIFIER_BYTES,
    Token,
    check_uescape_char,
    decode_uident,
    identifier_value,
    is_word,
    string_value,
)
from grammar.og_scan import TokenStream, is_og_colid

TARGETS = ("all", "node", "coordinator")

# openGauss parser.cpp ``base_yylex``: a token of the key, followed by one of the value,
# is read as one token (``NULLS FIRST`` -> ``NULLS_FIRST``).
_COMBINE: dict[str, frozenset[str]] = {
    "NULLS_P": frozenset({"FIRST_P", "LAST_P"}),
    "NOT": frozenset({"ENFORCED", "IN_P", "BETWEEN", "LIKE", "ILIKE", "SIMILAR"}),
    "EVENT": frozenset({"TRIGGER"}),
    "WITH": frozenset({"TIME"}),
    "INCLUDING": frozenset({"ALL"}),
    "RENAME": frozenset({"PARTITION"}),
    "PARTITION": frozenset({"FOR"}),
    "SUBPARTITION": frozenset({"FOR"}),
    "ADD_P": frozenset({"PARTITION", "SUBPARTITION"}),
    "DROP": frozenset({"PARTITION", "SUBPARTITION"}),
    "REBUILD": frozenset({"PARTITION"}),
    "MODIFY_P": frozenset({"PARTITION"}),
    "VALID": frozenset({"BEGIN_P"}),
    "START": frozenset({"WITH"}),
    "CONNECT": frozenset({"BY"}),
    "SHOW": frozenset({"ERRORS"}),
    "USE_P": frozenset({"KEY", "INDEX"}),
    "FORCE": frozenset({"KEY", "INDEX"}),
    "IGNORE": frozenset({"KEY", "INDEX"}),
    "STATIC_P": frozenset({"FUNCTION", "PROCEDURE"}),
    "MEMBER": frozenset({"FUNCTION", "PROCEDURE"}),
    "CONSTRUCTOR": frozenset({"FUNCTION"}),
    "MAP": frozenset({"MEMBER"}),
    "SELF": frozenset({"INOUT"}),
}
_DECLARE_CURSOR = frozenset({"CURSOR", "BINARY", "INSENSITIVE", "NO", "SCROLL"})
_READ_AHEAD = frozenset(_COMBINE) | {"DECLARE", "ON", "LATERAL_P", "CURSOR"}


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted identifier, with ``"`` doubled."""
    return '"' + name.replace('"', '""') + '"'


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty str, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"{what} must not contain NUL")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not encodable as UTF-8") from None
    if size > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{what} is longer than {MAX_IDENTIFIER_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class CleanConnection:
    """A parsed ``CLEAN CONNECTION`` statement.

    ``target`` is ``"all"``, ``"node"`` or ``"coordinator"``; ``nodes`` is empty exactly for
    ``"all"``; ``check`` and ``force`` can only be set for ``"all"``. Names are the values
    the server would see (folded, unquoted, truncated). Invalid combinations raise
    ValueError, so every instance renders to SQL that parses back to an equal value.
    """

    target: str
    nodes: tuple[str, ...] = ()
    check: bool = False
    force: bool = False
    database: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not isinstance(self.nodes, tuple):
            raise ValueError("nodes must be a tuple")
        if self.target == "all":
            if self.nodes:
                raise ValueError("nodes must be empty for target 'all'")
        else:
            if not self.nodes:
                raise ValueError(f"target {self.target!r} needs at least one node")
            if self.check or self.force:
                raise ValueError("check/force are only allowed with target 'all'")
        for node in self.nodes:
            _check_name(node, "node name")
        if self.database is not None:
            _check_name(self.database, "database")
        if self.user is not None:
            _check_name(self.user, "user")

    def to_sql(self) -> str:
        """Canonical text: keywords upper case, every name double-quoted, no ``;``."""
        parts = ["CLEAN CONNECTION TO"]
        if self.target == "all":
            parts.append("ALL")
            if self.check:
                parts.append("CHECK")
            if self.force:
                parts.append("FORCE")
        else:
            nodes = ", ".join(quote_identifier(n) for n in self.nodes)
            parts.append(f"{self.target.upper()} ({nodes})")
        if self.database is not None:
            parts.append(f"FOR DATABASE {quote_identifier(self.database)}")
        if self.user is not None:
            parts.append(f"TO USER {quote_identifier(self.user)}")
        return " ".join(parts)


class _Parser:
    """Recursive descent over non-comment tokens; one token of lookahead (two after FOR)."""

    def __init__(self, sql: str, tokens: Sequence[Token] | TokenStream, eof_position: int) -> None:
        self.sql = sql
        self.tokens = tokens
        self.eof_position = eof_position
        self.index = 0
        # Lookahead cache: (token as the parser sees it, identifier value, index after it).
        self._la: tuple[Token, str | None, int] | None = None

    # -- token access -------------------------------------------------------------------
    def peek(self) -> Token | None:
        la = self._lookahead()
        return None if la is None else la[0]

    def _lookahead(self) -> tuple[Token, str | None, int] | None:
        if self._la is None and self._tok(self.index) is not None:
            self._la = self._fetch(self.index)
        return self._la

    def _tok(self, i: int) -> Token | None:
        """Token ``i``, or None past the end (a lazy stream scans only as far as asked)."""
        tokens = self.tokens
        if isinstance(tokens, TokenStream):
            return tokens.get(i)
        return tokens[i] if i < len(tokens) else None

    def _fetch(self, i: int) -> tuple[Token, str | None, int]:
        """Like openGauss's ``base_yylex``: a scanner error surfaces when its token (or a
        token the lookahead filter reads ahead) is fetched; two-word tokens (``NULLS
        FIRST``, ``FORCE INDEX``, ``PARTITION FOR``...) become one token, located at the
        second word as openGauss reports it, which no rule here accepts. A pglast
        ``U&"..."`` token is decoded as PostgreSQL does, absorbing ``UESCAPE 'c'``."""
        tok = self._tok(i)
        assert tok is not None
        if tok.error is not None:
            raise tok.error
        if tok.name in _READ_AHEAD:
            combined = self._filter(tok, i)
            if combined is not None:
                return combined
        if tok.name != "UIDENT" or tok.value is not None:
            return tok, tok.value, i + 1
        nxt = self._tok(i + 1)
        if nxt is None or nxt.name != "UESCAPE":
            return tok, decode_uident(tok), i + 1
        lit = self._tok(i + 2)
        if lit is None or lit.name != "SCONST":
            self._fail(lit, "UESCAPE must be followed by a simple string literal")
        assert lit is not None
        escape = string_value(lit)
        if escape is None or not check_uescape_char(escape):
            self._fail(lit, "invalid Unicode escape character")
        assert escape is not None
        value = decode_uident(tok, escape)
        merged = Token("UIDENT", tok.kind, tok.start, lit.end, self.sql[tok.start : lit.end])
        return merged, value, i + 3

    def _ahead(self, i: int) -> Token | None:
        """Token ``i`` read ahead by the filter (its scanner error surfaces now)."""
        tok = self._tok(i)
        if tok is None:
            return None
        if tok.error is not None:
            raise tok.error
        return tok

    def _filter(self, tok: Token, i: int) -> tuple[Token, str | None, int] | None:
        """openGauss's lookahead filter for ``tok`` (parser.cpp ``base_yylex``)."""
        nxt = self._ahead(i + 1)
        if nxt is None:
            return None
        if tok.name in ("DECLARE", "ON"):  # two tokens read ahead; only the name changes
            after = self._ahead(i + 2)
            if tok.name == "DECLARE" and after is not None and after.name in _DECLARE_CURSOR:
                return tok._replace(name="DECLARE_CURSOR", kind="COMBINED"), None, i + 1
            return None
        if tok.name == "LATERAL_P":
            if nxt.name == "IDENT":
                after = self._ahead(i + 2)
                if after is not None and after.name == "ASCII_40":
                    return tok._replace(name="LATERAL_EXPR", kind="COMBINED"), None, i + 1
            return None
        if tok.name == "CURSOR":
            if nxt.name == "ASCII_40":
                self._ahead(i + 2)
            return None
        if nxt.name in _COMBINE.get(tok.name, ()):
            return nxt._replace(name=f"{tok.name}_{nxt.name}", kind="COMBINED"), None, i + 2
        return None

    def advance(self) -> tuple[Token, str | None]:
        la = self._lookahead()
        if la is None:
            self._fail(None)
        assert la is not None
        self.index = la[2]
        self._la = None
        return la[0], la[1]

    def _fail(self, tok: Token | None, message: str = "syntax error") -> None:
        if tok is None:
            raise GrammarError(f"{message} at end of input", self.eof_position)
        raise GrammarError(f'{message} at or near "{tok.text}"', tok.start + 1)

    def error(self) -> GrammarError:
        try:
            self._fail(self.peek())
        except GrammarError as exc:
            return exc
        raise AssertionError("unreachable")

    def accept(self, name: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.name == name:
            self.advance()
            return True
        return False

    def expect(self, name: str) -> None:
        if not self.accept(name):
            raise self.error()

    def accept_word(self, word: str) -> bool:
        """Accept the unquoted word ``word`` (an identifier or a keyword, any case)."""
        tok = self.peek()
        if tok is not None and tok.kind != "COMBINED" and is_word(tok, word):
            self.advance()
            return True
        return False

    def name(self) -> str:
        tok = self.peek()
        if tok is None or not is_og_colid(tok):
            raise self.error()
        tok, value = self.advance()
        return value if value is not None else identifier_value(tok)

    def _database_keyword_then_name(self) -> bool:
        """After FOR: is the next token ``DATABASE`` followed by a name (bison's second
        token of lookahead; reading it can surface a scanner error, as in openGauss)?"""
        la = self._lookahead()
        if la is None or la[0].name != "DATABASE" or self._tok(la[2]) is None:
            return False
        return is_og_colid(self._fetch(la[2])[0])

    # -- grammar --------------------------------------------------------------------------
    def statement(self) -> CleanConnection:
        if not self.accept_word("clean"):
            raise self.error()
        self.expect("CONNECTION")
        self.expect("TO")
        nodes: tuple[str, ...] = ()
        check = force = False
        if self.accept("ALL"):
            target = "all"
            check = self.accept("CHECK")
            force = self.accept("FORCE")
        elif self.accept_word("coordinator"):
            target, nodes = "coordinator", self.node_list()
        elif self.accept_word("node"):
            target, nodes = "node", self.node_list()
        else:
            raise self.error()
        database = user = None
        if self.accept("FOR"):
            if self._database_keyword_then_name():
                self.advance()
            database = self.name()
        if self.accept("TO"):
            self.accept("USER")
            user = self.name()
        self.accept("ASCII_59")
        if self.peek() is not None:
            raise self.error()
        return CleanConnection(target, nodes, check, force, database, user)

    def node_list(self) -> tuple[str, ...]:
        self.expect("ASCII_40")
        names = [self.name()]
        while self.accept("ASCII_44"):
            names.append(self.name())
        self.expect("ASCII_41")
        return tuple(names)


def parse_tokens(
    sql: str, tokens: Sequence[Token] | TokenStream, eof_position: int
) -> CleanConnection:
    """Parse one statement from its non-comment ``tokens`` (offsets into ``sql``).

    ``tokens`` come from :class:`grammar.og_scan.TokenStream` (openGauss's reading, scanned
    only as far as the parser reads; a scanner error is raised when the parser reaches
    it), :func:`grammar.og_scan.scan_statement` (the same as a list) or, for compatibility,
    from pglast's scanner (:func:`grammar.lexer.scan`, comments removed; words are then
    still classified with openGauss's keyword table). They may end with the terminating
    ``;``; running out of tokens is reported as ``syntax error at end of input`` at
    ``eof_position`` (1-based).
    """
    return _Parser(sql, tokens, eof_position).statement()


def parse_statement(
    sql: str,
    start: int = 0,
    end: int | None = None,
    eof_position: int | None = None,
    *,
    standard_conforming_strings: bool = True,
) -> CleanConnection:
    """Parse ``sql[start:end]`` (one statement starting with ``clean``, its ``;`` included
    or not) as openGauss does. Positions are 1-based over ``sql``; ``eof_position``
    defaults to ``len(sql) + 1``. Raises :class:`GrammarError`: the scanner's or the
    parser's error, whichever openGauss meets first."""
    tokens = TokenStream(sql, start, end, standard_conforming_strings=standard_conforming_strings)
    eof = len(sql) + 1 if eof_position is None else eof_position
    return parse_tokens(sql, tokens, eof)


def parse_clean_connection(sql: str) -> CleanConnection:
    """Parse ``sql`` as exactly one ``CLEAN CONNECTION`` statement, optionally ending in ``;``.

    Raises :class:`GrammarError` (positions relative to ``sql``) for anything else,
    including text after the ``;`` and strings the scanner rejects.
    """
    if "\x00" in sql:
        raise GrammarError("invalid message format", sql.index("\x00") + 1)
    return parse_statement(sql)
