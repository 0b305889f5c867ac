"""openGauss's scanner (``scan.l``) for one statement: tokens, or the scanner's error.

The CLEAN CONNECTION parser reads a statement the way openGauss does, which differs from
PostgreSQL's current scanner (pglast) where names and errors are concerned:

* ``#`` and ``$`` continue an identifier (``ident_cont``): ``sales#2024`` is one name.
* Keywords and their categories are openGauss's (:mod:`grammar.og_keywords`).
* A number followed by letters is two tokens (``9lives`` is ``9`` then ``lives``); there is
  no "trailing junk" error, no ``0x`` integers and no ``_`` digit separators.
* ``UESCAPE`` belongs to the scanner, as in PostgreSQL before 13: ``U&"..." UESCAPE 'c'``
  is one token only when ``UESCAPE`` follows with nothing but spaces and ``--`` comments
  and a one-character literal; otherwise the identifier ends at its quote. Decoding errors
  are ``invalid Unicode escape value``, ``invalid Unicode surrogate pair`` and ``invalid
  Unicode escape character``, at the positions openGauss computes (byte offsets in the
  undoubled body, counted as UTF-8).

Contract: :func:`scan_statement` returns the non-comment tokens of ``sql[start:end]``
(offsets into ``sql``, characters) as :class:`~grammar.lexer.Token` values. A scanner error
does not raise: the list then ends with a token whose ``error`` is the
:class:`~grammar.errors.GrammarError` (message ``<what> at or near "<text>"`` with the text
openGauss shows: from the error's location to the end of what the failing rule matched,
e.g. the whole rest of the string for an unterminated quote), because openGauss reports a
scanner error only when its parser asks for that token. ``UIDENT`` tokens carry their
decoded name in ``value``. Deviations, kept on purpose: ``U&`` escapes of code point 0 or
above U+10FFFF are reported as ``invalid Unicode escape value`` (openGauss fails later, in
the encoding check), a server encoding other than UTF-8 is not considered, and
``U&'...'`` strings with ``standard_conforming_strings`` off are not rejected here.
"""

from __future__ import annotations

import re

from grammar.errors import GrammarError
from grammar.lexer import Token, ascii_lower, truncate_identifier
from grammar.og_keywords import GRAM_Y_UNRESERVED, KEYWORDS

_CATEGORY_KIND = {
    "U": "UNRESERVED_KEYWORD",
    "C": "COL_NAME_KEYWORD",
    "T": "TYPE_FUNC_NAME_KEYWORD",
    "R": "RESERVED_KEYWORD",
}

_SPACE = " \t\n\r\f"
_IDENT = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$#\x80-\U0010ffff]*")
_DOLQ_DELIM = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_DOLQ_FAILED = re.compile(r"\$[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*")
_PARAM = re.compile(r"\$[0-9]+")
_NEW_PARAM = re.compile(r":(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$#\x80-\U0010ffff]*|[0-9]+)")
_NEW_ARRAY_TAIL = re.compile(r"[ \t\n\r\f]*\]")
_OPERATOR = re.compile(r"[~!#^&|`?+\-*/%<>=@]+")
_SELF = ",()[].;:+-*/%^<>=@"
_SET_IDENT_CONT = re.compile(r"[A-Za-z_0-9$#\x80-\xff]")
_SET_USER_CONT = re.compile(r"[A-Za-z\xff_0-9$.]")
# whitespace: {space}+ | "--" comment (to the end of the line)
_WS = r"(?:[ \t\n\r\f]+|--[^\n\r]*)"
_WS_STAR = re.compile(_WS + "*")
# whitespace_with_newline: horizontal whitespace/comments, a newline, then spaces or
# comments followed by a newline
_QUOTE_CONTINUE = re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f]+|--[^\n\r]*[\n\r])*'")
_UESCAPE = re.compile(r"[uU][eE][sS][cC][aA][pP][eE]" + _WS + r"*'[^']'")
_UESCAPE_FAIL = re.compile(
    r"-|[uU][eE][sS][cC][aA][pP][eE]"
    + _WS
    + r"*(?:-|'[^']?)?|[uU](?:[eE](?:[sS](?:[cC](?:[aA][pP]?)?)?)?)?"
)
_NUMBERS = (
    # (pattern, characters thrown back by yyless, token name); flex's rule order
    (re.compile(r"[0-9]+"), 0, "ICONST"),
    (re.compile(r"[0-9]*\.[0-9]+|[0-9]+\.[0-9]*"), 0, "FCONST"),
    (re.compile(r"[0-9]+\.\."), 2, "ICONST"),
    (re.compile(r"(?:[0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[fFdD]"), 1, "FCONST"),
    (re.compile(r"(?:[0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[Ee][-+]?[0-9]+[fFdD]"), 1, "FCONST"),
    (re.compile(r"(?:[0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[Ee][-+]?[0-9]+"), 0, "FCONST"),
    (re.compile(r"(?:[0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[Ee]"), 1, "FCONST"),
    (re.compile(r"(?:[0-9]+|[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[Ee][-+]"), 2, "FCONST"),
    (re.compile(r"[0-9]+(?:\.[0-9]+)*"), 0, "VCONST"),
)
_HEX = frozenset("0123456789abcdefABCDEF")
_NEWLINE = re.compile(r"[\n\r]")
_COMMENT_MARK = re.compile(r"/\*|\*/")
_Q_BODY = re.compile(r"[^']*+")
# a backslash takes the next character, even a quote (a lone one at the end is text)
_E_BODY = re.compile(r"(?:[^\\']++|\\.)*+\\?", re.S)


class _Stop(Exception):
    """A scanner error: ends the token list."""

    def __init__(self, error: GrammarError) -> None:
        super().__init__(error)
        self.error = error


def _char_name(ch: str) -> str:
    return f"ASCII_{ord(ch)}"


def scan_statement(
    sql: str, start: int = 0, end: int | None = None, *, standard_conforming_strings: bool = True
) -> list[Token]:
    """The tokens of ``sql[start:end]`` as openGauss's scanner reads them (module doc)."""
    stream = TokenStream(sql, start, end, standard_conforming_strings=standard_conforming_strings)
    stream.get(len(sql) + 1)
    return stream.tokens


class TokenStream:
    """The same tokens, scanned only as far as :meth:`get` asks: a parser that fails early
    (openGauss's does at the first bad token) never pays for the rest of the statement."""

    __slots__ = ("_scanner", "_stopped", "tokens")

    def __init__(
        self,
        sql: str,
        start: int = 0,
        end: int | None = None,
        *,
        standard_conforming_strings: bool = True,
    ) -> None:
        self._scanner = _Scanner(
            sql, start, len(sql) if end is None else end, standard_conforming_strings
        )
        self.tokens = self._scanner.tokens
        self._stopped = False

    def get(self, i: int) -> Token | None:
        """Token ``i`` (an ``ERROR`` token ends the stream), or None past the end."""
        while len(self.tokens) <= i and not self._stopped:
            self._stopped = not self._scanner.step()
        return self.tokens[i] if i < len(self.tokens) else None


class _Scanner:
    def __init__(self, sql: str, start: int, end: int, scs: bool) -> None:
        self.sql, self.pos, self.end, self.scs = sql, start, end, scs
        self.tokens: list[Token] = []

    # -- helpers -----------------------------------------------------------------------
    def _error(self, message: str, at: int, text_end: int) -> _Stop:
        return _Stop(GrammarError(f'{message} at or near "{self.sql[at:text_end]}"', at + 1))

    def _emit(self, name: str, kind: str, start: int, end: int, value: str | None = None) -> None:
        self.tokens.append(Token(name, kind, start, end, self.sql[start:end], value))

    def step(self) -> bool:
        """Scan one more token; False once the statement (or a scanner error) ended it."""
        try:
            return self._next()
        except _Stop as stop:
            err = stop.error
            at = err.position - 1
            self.tokens.append(Token("ERROR", "NO_KEYWORD", at, at, "", None, err))
            return False

    # -- the rules -----------------------------------------------------------------------
    def _next(self) -> bool:
        sql, pos, end = self.sql, self.pos, self.end
        while pos < end:
            c = sql[pos]
            if c in _SPACE:
                pos += 1
            elif c == "-" and sql.startswith("--", pos):
                m = _NEWLINE.search(sql, pos, end)
                pos = end if m is None else m.start()
            elif c == "/" and sql.startswith("/*", pos):
                pos = self._comment(pos)
            else:
                break
        self.pos = pos
        if pos >= end:
            return False
        c = sql[pos]
        nxt = sql[pos + 1] if pos + 1 < end else ""
        if c in "bBxX" and nxt == "'":
            self._bits(pos, "BCONST" if c in "bB" else "XCONST")
        elif c in "nN" and nxt == "'":
            # xnstart: NCHAR keyword for the "n", then the string
            self._emit("NCHAR", "COL_NAME_KEYWORD", pos, pos + 1)
            self.pos = pos + 1
        elif c in "eE" and nxt == "'":
            self._string(pos, pos + 2, escape=True)
        elif c in "uU" and nxt == "&":
            third = sql[pos + 2] if pos + 2 < end else ""
            if third == '"':
                self._uident(pos)
            elif third == "'":
                self._string(pos, pos + 3, escape=False, unicode=True)
            else:  # xufailed: the "u" alone is an identifier
                self._emit("IDENT", "NO_KEYWORD", pos, pos + 1)
                self.pos = pos + 1
        elif c == "'":
            self._string(pos, pos + 1, escape=not self.scs)
        elif c == '"':
            self._quoted_ident(pos)
        elif c == "$":
            self._dollar(pos)
        elif (c.isdigit() and c.isascii()) or (c == "." and nxt.isdigit() and nxt.isascii()):
            self._number(pos)
        elif _IDENT.match(sql, pos, end):
            self._word(pos)
        else:
            self._punct(pos)
        return True

    def _comment(self, pos: int) -> int:
        sql, end = self.sql, self.end
        depth, i = 0, pos + 2
        while True:
            m = _COMMENT_MARK.search(sql, i, end)
            if m is None:
                raise self._error("unterminated /* comment", pos, end)
            i = m.end()
            if m.group() == "/*":
                depth += 1
            elif depth == 0:
                return i
            else:
                depth -= 1

    def _word(self, pos: int) -> None:
        m = _IDENT.match(self.sql, pos, self.end)
        assert m is not None
        text = m.group()
        entry = KEYWORDS.get(text.lower()) if text.isascii() else None
        if entry is not None:
            self._emit(entry[0], _CATEGORY_KIND[entry[1]], pos, m.end())
        else:
            self._emit("IDENT", "NO_KEYWORD", pos, m.end())
        self.pos = m.end()

    def _quoted_ident(self, pos: int) -> None:
        sql, end = self.sql, self.end
        i = pos + 1
        while True:
            q = sql.find('"', i, end)
            if q < 0:
                raise self._error("unterminated quoted identifier", pos, end)
            if q + 1 < end and sql[q + 1] == '"':
                i = q + 2
                continue
            break
        if q == pos + 1:
            raise self._error("zero-length delimited identifier", pos, q + 1)
        value = truncate_identifier(sql[pos + 1 : q].replace('""', '"'))
        self._emit("IDENT", "NO_KEYWORD", pos, q + 1, value)
        self.pos = q + 1

    def _uident(self, pos: int) -> None:
        sql, end = self.sql, self.end
        i = pos + 3
        while True:
            q = sql.find('"', i, end)
            if q < 0:
                raise self._error("unterminated quoted identifier", pos, end)
            if q + 1 < end and sql[q + 1] == '"':
                i = q + 2
                continue
            break
        body = sql[pos + 3 : q].replace('""', '"')
        ws_end = _WS_STAR.match(sql, q + 1, end).end()  # type: ignore[union-attr]
        full = _UESCAPE.match(sql, ws_end, end)
        if full is not None:
            match_end = full.end()
            escape = sql[match_end - 2]
        else:
            fail = _UESCAPE_FAIL.match(sql, ws_end, end)
            match_end = fail.end() if fail is not None else ws_end
            escape = "\\"
        if not body:
            raise self._error("zero-length delimited identifier", pos, match_end)
        base = len(sql[:pos].encode("utf-8"))  # openGauss counts bytes, then characters
        if full is not None and (
            escape in _HEX or escape in "+'\"" or escape in _SPACE or not escape.isascii()
        ):
            at = base + len(body.encode("utf-8")) + len(sql[q:match_end].encode("utf-8")) + 1
            raise self._error("invalid Unicode escape character", self._char_at(at), match_end)
        value = self._udeescape(body, escape, pos, base, match_end)
        token_end = match_end if full is not None else q + 1
        self._emit("UIDENT", "NO_KEYWORD", pos, token_end, truncate_identifier(value))
        self.pos = token_end

    def _char_at(self, byte_offset: int) -> int:
        """The character offset openGauss reports for a UTF-8 byte offset into ``sql``."""
        return len(self.sql.encode("utf-8")[:byte_offset].decode("utf-8", "ignore"))

    def _udeescape(self, body: str, escape: str, pos: int, base: int, match_end: int) -> str:
        out: list[str] = []
        pair_first = 0
        i, n = 0, len(body)

        def fail(message: str, at: int | None) -> _Stop:
            where = pos if at is None else self._char_at(base + 3 + len(body[:at].encode()))
            return self._error(message, where, match_end)

        while i < n:
            at = body.find(escape, i)
            if at != i:  # plain text up to the next escape (or the end)
                if pair_first:
                    raise fail("invalid Unicode surrogate pair", i)
                stop = n if at < 0 else at
                out.append(body[i:stop])
                i = stop
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
                raise fail("invalid Unicode escape value", i)
            if pair_first:
                if 0xDC00 <= code <= 0xDFFF:
                    code = ((pair_first & 0x3FF) << 10) + 0x10000 + (code & 0x3FF)
                    pair_first = 0
                else:
                    raise fail("invalid Unicode surrogate pair", i)
            elif 0xDC00 <= code <= 0xDFFF:
                raise fail("invalid Unicode surrogate pair", None)
            if 0xD800 <= code <= 0xDBFF:
                pair_first = code
            elif code == 0 or code > 0x10FFFF:
                raise fail("invalid Unicode escape value", i)  # openGauss: invalid byte sequence
            else:
                out.append(chr(code))
            i += width
        if pair_first:
            raise fail("invalid Unicode surrogate pair", n)
        return "".join(out)

    def _quote_end(self, q: int) -> int | None:
        """At a closing quote ``q``: the position after a continuation (``'`` whitespace with
        a newline ``'``) if one follows, else None."""
        m = _QUOTE_CONTINUE.match(self.sql, q + 1, self.end)
        return m.end() if m is not None else None

    def _string(self, pos: int, i: int, *, escape: bool, unicode: bool = False) -> None:
        sql, end = self.sql, self.end
        body = _E_BODY if escape else _Q_BODY
        while True:
            i = body.match(sql, i, end).end()  # type: ignore[union-attr]
            if i >= end:
                raise self._error("unterminated quoted string", pos, end)
            if i + 1 < end and sql[i + 1] == "'":
                i += 2
                continue
            cont = self._quote_end(i)
            if cont is not None:
                i = cont
                continue
            break
        token_end = i + 1
        if unicode:  # xusstop2: a following UESCAPE 'c' belongs to the token
            ws_end = _WS_STAR.match(sql, token_end, end).end()  # type: ignore[union-attr]
            full = _UESCAPE.match(sql, ws_end, end)
            if full is not None:
                token_end = full.end()
        self._emit("SCONST", "NO_KEYWORD", pos, token_end)
        self.pos = token_end

    def _bits(self, pos: int, name: str) -> None:
        sql, end = self.sql, self.end
        i = pos + 2
        while True:
            q = sql.find("'", i, end)
            if q < 0:
                what = "bit string" if name == "BCONST" else "hexadecimal string"
                raise self._error(f"unterminated {what} literal", pos, end)
            cont = self._quote_end(q)
            if cont is None:
                break
            i = cont
        self._emit(name, "NO_KEYWORD", pos, q + 1)
        self.pos = q + 1

    def _dollar(self, pos: int) -> None:
        sql, end = self.sql, self.end
        m = _DOLQ_DELIM.match(sql, pos, end)
        if m is not None:
            delim = m.group()
            close = sql.find(delim, m.end(), end)
            if close < 0:
                raise self._error("unterminated dollar-quoted string", pos, end)
            self._emit("SCONST", "NO_KEYWORD", pos, close + len(delim))
            self.pos = close + len(delim)
            return
        p = _PARAM.match(sql, pos, end)
        if p is not None and (
            _DOLQ_FAILED.match(sql, pos, end) is None
            or p.end() >= _DOLQ_FAILED.match(sql, pos, end).end()  # type: ignore[union-attr]
        ):
            self._emit("PARAM", "NO_KEYWORD", pos, p.end())
            self.pos = p.end()
            return
        self._emit(_char_name("$"), "NO_KEYWORD", pos, pos + 1)  # dolqfailed / other
        self.pos = pos + 1

    def _number(self, pos: int) -> None:
        best_len, best_back, best_name = 0, 0, "ICONST"
        for pattern, back, name in _NUMBERS:
            m = pattern.match(self.sql, pos, self.end)
            if m is not None and m.end() - pos > best_len:
                best_len, best_back, best_name = m.end() - pos, back, name
        if best_len == 0:  # "." not followed by a digit is handled by _punct
            self._punct(pos)
            return
        stop = pos + best_len - best_back
        self._emit(best_name, "NO_KEYWORD", pos, stop)
        self.pos = stop

    def _punct(self, pos: int) -> None:
        sql, end = self.sql, self.end
        two = sql[pos : pos + 2]
        if two in ("::", ":=", "=>", ".."):
            name = {"::": "TYPECAST", ":=": "COLON_EQUALS", "=>": "PARA_EQUALS", "..": "DOT_DOT"}
            self._emit(name[two], "NO_KEYWORD", pos, pos + 2)
            self.pos = pos + 2
            return
        if sql.startswith("(+)", pos):
            self._emit("ORA_JOINOP", "NO_KEYWORD", pos, pos + 3)
            self.pos = pos + 3
            return
        c = sql[pos]
        if c == ":":
            m = _NEW_PARAM.match(sql, pos, end)
            if m is not None and _NEW_ARRAY_TAIL.match(sql, m.end(), end) is None:
                self._emit("PARAM", "NO_KEYWORD", pos, m.end())
                self.pos = m.end()
                return
        if c == "@":
            if sql.startswith("@@", pos) and _SET_IDENT_CONT.match(sql, pos + 2, end):
                self._emit("Op", "NO_KEYWORD", pos, pos + 2)  # set_identifier, yyless(2)
                self.pos = pos + 2
                return
            if _SET_USER_CONT.match(sql, pos + 1, end) or _closed_quote(sql, pos + 1, end):
                self._emit(_char_name("@"), "NO_KEYWORD", pos, pos + 1)  # setUserIdentifier
                self.pos = pos + 1
                return
        m = _OPERATOR.match(sql, pos, end)
        if m is None:
            self._emit(_char_name(c), "NO_KEYWORD", pos, pos + 1)  # self or other
            self.pos = pos + 1
            return
        text = m.group()
        nchars = len(text)
        cut = [i for i in (text.find("/*"), text.find("--")) if i > 0]
        if cut:
            nchars = min(cut)
        while nchars > 1 and text[nchars - 1] in "+-":
            if any(ch in "~!#^&|`?%" for ch in text[: nchars - 1]):
                break
            nchars -= 1
        if nchars == 1 and text[0] in _SELF:
            self._emit(_char_name(text[0]), "NO_KEYWORD", pos, pos + 1)
        else:
            if nchars >= 64:
                raise self._error("operator too long", pos, pos + nchars)
            self._emit("Op", "NO_KEYWORD", pos, pos + nchars)
        self.pos = pos + nchars


def is_og_colid(token: Token) -> bool:
    """True if openGauss's ``ColId`` takes ``token``: a quoted or ``U&`` identifier, a word
    openGauss does not reserve (identifier, unreserved or col_name keyword). Works for the
    tokens of :func:`scan_statement` and of pglast alike (words are classified by their
    text, with openGauss's table); a two-word token of the lookahead filter never is."""
    if token.kind == "COMBINED" or token.error is not None:
        return False
    if token.name == "UIDENT" or token.text[:1] == '"':
        return token.name in ("IDENT", "UIDENT")
    if token.name != "IDENT" and token.kind == "NO_KEYWORD":
        return False
    if _IDENT.fullmatch(token.text) is None:
        return False
    word = ascii_lower(token.text)
    entry = KEYWORDS.get(word)
    return entry is None or entry[1] in "UC" or word in GRAM_Y_UNRESERVED


def _closed_quote(sql: str, pos: int, end: int) -> bool:
    """setUserIdentifier's quoted forms: ``'x...'``, ``"x..."`` or a back-quoted name."""
    if pos + 1 >= end:
        return False
    q = sql[pos]
    if q not in "'\"`":
        return False
    close = sql.find(q, pos + 2, end)
    return close > pos + 1 and sql[pos + 1] != q
