"""Where the statements of a query string start, read from its raw bytes as they arrive.

:class:`OutlineScanner` is the cheap first look at a Query/Parse text that the proxy may have
to rewrite. It does not tokenize the text; it finds what decides where a statement can
start — quoted strings, quoted identifiers, dollar quotes and comments, with PostgreSQL's
lexical rules (``scan.l``) — and reports the statements whose first word is one of a few
*lead words* (``clean``, ``explain``; ``deallocate``, ``prepare``, ``discard`` on request),
with their byte extents. Only those statements are ever decoded and given to pglast's scanner.

Contract:

* Input is the client's bytes in an *ASCII-safe* client encoding (UTF8, the single-byte
  encodings, EUC_*, MULE_INTERNAL, JOHAB as PostgreSQL validates it): every byte below 0x80
  is the ASCII character. Callers mask the trail bytes of SJIS, BIG5, GBK, UHC and GB18030
  first (:func:`mask_trail_bytes`).
* :meth:`OutlineScanner.feed` may be called with the same growing buffer any number of
  times (``limit`` = bytes available so far); each byte is examined a bounded number of
  times, so the total work is linear in the text and each call costs at most what its new
  bytes cost. The text ends at the first NUL byte (the message's string terminator).
* The result is *certain or nothing*: a statement start is reported only where PostgreSQL's
  lexer would also start a token at top level. Whatever the scanner cannot judge exactly
  (a construct whose meaning depends on the server version, a literal prefix after a digit,
  ``\\v`` between continued strings, a ``U&''`` string with standard_conforming_strings off,
  an unterminated quote or comment, a text after a CREATE FUNCTION/PROCEDURE whose
  ``BEGIN ATOMIC`` body could hold ``;``) sets :attr:`OutlineScanner.uncertain` or
  :attr:`Lead.after_routine`, and the caller then leaves the text alone. Missing a lead
  is always safe: the server then rejects the unknown statement as a syntax error.
* Parentheses are not tracked. A ``;`` inside parentheses is a syntax error for PostgreSQL
  except between the actions of ``CREATE RULE ... DO (...)``, where none of the lead words
  can start a valid action either: only which syntax error is reported can change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A statement longer than this (bytes) is never decoded or parsed: the caller passes the
#: text through. A valid CLEAN CONNECTION is a few hundred bytes at most.
MAX_LEAD_STATEMENT = 64 * 1024

#: Python looks at a text at most this many times, plus once per 16 bytes of it (each
#: lead word, ``create``, string or comment holding ``;``, empty statement...); beyond
#: that the text is uncertain. Everything else is matched in C, so the work of any read is
#: bounded by its size, whatever the text.
DECISION_ALLOWANCE = 10_000
DECISIONS_PER_BYTE = 1 / 16
MAX_LEADS = 1_000

CLEAN_WORDS = frozenset({b"clean", b"explain"})  # CLEAN ... and EXPLAIN CLEAN ...
TRACKING_WORDS = CLEAN_WORDS | {b"deallocate", b"prepare", b"discard"}
_ROUTINE_WORD = b"create"
_LONGEST_WORD = 10  # len(b"deallocate")
_ROUTINE_WINDOW = 256

# Bytes PostgreSQL's scanner takes as identifier characters (``ident_cont``), and digits.
_IDENT = rb"A-Za-z0-9_$\x80-\xff"
_IDENT_START = rb"A-Za-z_\x80-\xff"
_IDENT_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$") | {
    *range(0x80, 0x100)
}
_DIGITS = frozenset(b"0123456789")

# Complete constructs the body pattern consumes in C; anything else stops it. None of
# them holds a ";" (a string or comment with one is opened by Python), so every ";" the
# pattern consumes ends a statement, and counting them in the consumed bytes is exact.
# Letters are taken with the rest: a letter after a letter is always the same word.
_RUN = rb"[^'\"$;\-/\x00]++"
_STD_QUOTED = rb"'(?:[^';\x00]++|'')*+'(?=[^'])"
# An escape string, taken whole only where no continuation (a newline, then another
# quote, which continues the escape string) can follow: otherwise Python looks.
_ESC_QUOTED = rb"'(?:[^'\\;\x00]++|''|\\[^;\x00])*+'(?=[ \t\f]*+[^ \t\f\n\r\v\-'])"
# A prefix letter starts a token unless a word character comes before it; after a digit
# or a "$" (the end of a number, or of a dollar quote, or a "$" in a word) Python decides.
_E_PREFIX = rb"(?<=(?<![A-Za-z0-9_$\x80-\xff])[eE])"
_BX_PREFIX = rb"(?<=(?<![A-Za-z0-9_$\x80-\xff])[bBxX])"
# Bit and hex strings end at the first quote (no doubled quote in them: b'0''1' is two
# constants); like escape strings they continue after whitespace with a newline.
_BIT_QUOTED = rb"'[^';\x00]*+'(?=[ \t\f]*+[^ \t\f\n\r\v\-'])"
# A plain quote: not after a prefix letter that starts a token, nor after a digit and a
# prefix letter (``1e'..'`` is an E string to PostgreSQL 15 and an error to 16).
_NO_PREFIX = rb"(?:(?<![eEbBxX])|(?<=[A-Za-z_\x80-\xff][eEbBxX]))"
_TOKEN_START = rb"(?<![A-Za-z0-9_$\x80-\xff])"
_DOUBLE_QUOTED = rb'"(?:[^";\x00]++|"")*+"(?=[^"])'
_DOLLAR_QUOTED = (
    _TOKEN_START
    + rb"\$(?P<tag>(?:["
    + _IDENT_START
    + rb"][A-Za-z0-9_\x80-\xff]*+)?)\$(?:[^$;\x00]++|\$(?!(?P=tag)\$))*+\$(?P=tag)\$"
)
_ASCII_DOLLAR_QUOTED = (
    _TOKEN_START
    + rb"\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*+)?)\$(?:[^$;\x00]++|\$(?!(?P=tag)\$))*+\$(?P=tag)\$"
)
_PARAM = _TOKEN_START + rb"\$[0-9]++(?=[^0-9])"
# A "$" after a letter continues a word (PostgreSQL's ident_cont); after a digit or
# another "$" it could also start a token: Python decides.
_WORD_DOLLAR = rb"(?<=[A-Za-z_\x80-\xff])\$"
_LINE_COMMENT = rb"--[^\n\r;\x00]*+(?=[\n\r\x00])"
_BLOCK_COMMENT = rb"/\*(?:[^*/;\x00]++|\*(?!/)|/(?!\*))*+\*/"
_MINUS = rb"-(?=[^-])"
_SLASH = rb"/(?=[^*])"
_SPACE_CLASS = rb" \t\n\r\f\v"
_WORD_END = rb"(?![A-Za-z0-9_$\x80-\xff])"

_body_cache: dict[tuple[bool, frozenset[bytes], bool, bool], re.Pattern[bytes]] = {}


def _body_pattern(
    scs: bool, words: frozenset[bytes], semicolons: bool, masked: bool = False
) -> re.Pattern[bytes]:
    """The pattern that consumes complete tokens of a statement body in one C call.

    With ``semicolons``, a ``;`` is consumed too when, after spaces, a token follows that
    is visibly neither a comment, nor another ``;``, nor a word Python must judge (a lead
    word, ``create``, or a word not yet seen whole).
    """
    key = (scs, words, semicolons, masked)
    pattern = _body_cache.get(key)
    if pattern is not None:
        return pattern
    plain = (
        _NO_PREFIX + _STD_QUOTED
        if scs
        # With standard_conforming_strings off a plain quote reads backslashes like E'';
        # after "&" it could be U&'', which the server then rejects: Python decides.
        else _NO_PREFIX + rb"(?<!&)" + _ESC_QUOTED
    )
    # The alternatives never overlap; the most frequent come first (each failed one costs).
    alternatives = [_RUN]
    if semicolons:
        judged = rb"|".join(sorted(words | {_ROUTINE_WORD}))
        letters = bytes(sorted({w[0] for w in words | {_ROUTINE_WORD}}))
        letters += letters.upper()
        alternatives.append(
            rb";(?=["
            + _SPACE_CLASS
            + rb"]*+(?:[^"
            + _SPACE_CLASS
            + rb"\-/;"
            + letters
            + rb"]|(?!(?i:"
            + judged
            + rb")"
            + _WORD_END
            + rb")["
            + letters
            + rb"][A-Za-z0-9_$\x80-\xff]{0,63}+[^A-Za-z0-9_$\x80-\xff]))"
        )
    alternatives += [
        plain,
        _E_PREFIX + _ESC_QUOTED,
        _BX_PREFIX + _BIT_QUOTED,
        _DOUBLE_QUOTED,
        _MINUS,
        _SLASH,
        _LINE_COMMENT,
        _BLOCK_COMMENT,
        # In a masked text every multibyte character reads \x80\x80: two different tags
        # would look alike, so only ASCII tags are taken (Python gives up on others).
        _ASCII_DOLLAR_QUOTED if masked else _DOLLAR_QUOTED,
        _PARAM,
        _WORD_DOLLAR,
    ]
    pattern = re.compile(rb"(?:" + rb"|".join(alternatives) + rb")*+")
    _body_cache[key] = pattern
    return pattern


_SPACES = re.compile(rb"[" + _SPACE_CLASS + rb"]*+")
_WORD = re.compile(rb"[" + _IDENT_START + rb"][" + _IDENT + rb"]*+")
_LINE_END = re.compile(rb"[\n\r\x00]")
_BLOCK_TOKEN = re.compile(rb"/\*|\*/|\x00")
_STD_BODY = {
    0x27: re.compile(rb"(?:[^'\x00]++|'')*+"),
    0x22: re.compile(rb'(?:[^"\x00]++|"")*+'),
}
_BITS_BODY = re.compile(rb"[^'\x00]*+")
_ESC_BODY = re.compile(rb"(?:[^'\\\x00]++|''|\\[^\x00])*+")
_DOLLAR_OPENER = re.compile(rb"\$(?:[" + _IDENT_START + rb"][A-Za-z0-9_\x80-\xff]*+)?\$")
_DOLLAR_PREFIX = re.compile(rb"\$(?:[" + _IDENT_START + rb"][A-Za-z0-9_\x80-\xff]*+|[0-9]*+)")
_GAP = rb"(?:[" + _SPACE_CLASS + rb"]++|--[^\n\r\x00]*+|/\*(?:[^*\x00]|\*(?!/))*+\*/)++"
_ROUTINE = re.compile(
    rb"(?i:create" + _GAP + rb"(?:or" + _GAP + rb"replace" + _GAP + rb")?(?:function|procedure))"
    rb"(?![" + _IDENT + rb"])"
)


@dataclass(slots=True)
class Lead:
    """A statement whose first word is a lead word.

    ``start`` is the offset of that word; ``index`` the number of non-empty statements
    before it; ``end`` the offset of the statement's terminating ``;`` or of the text's NUL
    (-1 until seen). ``after_routine`` is set when a
    CREATE FUNCTION/PROCEDURE statement came before it in the same text (its body could
    hold this ``;``).
    """

    word: bytes
    start: int
    index: int = -1
    end: int = -1
    after_routine: bool = False

    @property
    def too_long(self) -> bool:
        return self.end - self.start > MAX_LEAD_STATEMENT


# Open constructs that span the bytes seen so far.
_LINE, _BLOCK, _QUOTE, _ESCAPE, _DOLLAR, _CONTINUATION, _CONTINUATION_COMMENT, _BITS = range(8)


class OutlineScanner:
    """Finds the lead statements of one query text, incrementally (see the module doc).

    ``start`` is the offset of the text in the buffers given to :meth:`feed`.
    """

    __slots__ = (
        "_body",
        "_body_in_lead",
        "_closer",
        "_continues",
        "_count",
        "_current",
        "_decisions",
        "_depth",
        "_first",
        "_first_letters",
        "_masked",
        "_newline_seen",
        "_open",
        "_pos",
        "_routine_seen",
        "_scs",
        "_start",
        "_words",
        "done",
        "encoding",
        "end",
        "leads",
        "uncertain",
    )

    @property
    def standard_conforming_strings(self) -> bool:
        return self._scs

    @property
    def tracking(self) -> bool:
        """True when statements that redefine prepared statements are looked for."""
        return b"deallocate" in self._words

    @property
    def found(self) -> bool:
        """Once done: True if there is anything to look at (a lead, or an uncertain text)."""
        return bool(self.leads) or self.uncertain

    def __init__(
        self,
        *,
        start: int = 0,
        standard_conforming_strings: bool = True,
        words: frozenset[bytes] = CLEAN_WORDS,
        masked: bool = False,
    ) -> None:
        self._start = self._pos = start
        self._masked = masked  # multibyte characters were replaced by \x80 bytes
        self._scs = standard_conforming_strings
        self._words = words
        self.encoding = ""  # the client encoding the text was read in, for the caller
        letters = bytes(sorted({w[0] for w in words} | {_ROUTINE_WORD[0]}))
        self._first_letters = letters + letters.upper()
        self._body = _body_pattern(self._scs, words, True, masked)
        self._body_in_lead = _body_pattern(self._scs, words, False, masked)
        self._count = 0  # non-empty statements ended so far
        self._decisions = 0
        self._first = True  # expecting the first token of a statement
        self._open: int | None = None
        self._depth = 0  # block comment nesting
        self._closer = b""  # dollar quote delimiter
        self._newline_seen = False  # in a string continuation
        self._continues = _ESCAPE  # the kind of string a continuation goes on with
        self._current: Lead | None = None
        self._routine_seen = False
        self.leads: list[Lead] = []
        self.done = False  # the NUL was reached, or the text is uncertain
        self.uncertain = False
        self.end = -1  # offset of the NUL ending the text

    def feed(self, buf: bytes | bytearray, limit: int) -> bool:
        """Examine ``buf[:limit]`` past what earlier calls examined; True once done."""
        pos = self._pos
        while not self.done:
            if self._open is not None:
                before = (pos, self._open)
                pos = self._continue_open(buf, pos, limit)
                if self.done or (self._open is not None and (pos, self._open) == before):
                    break  # finished, or the open construct needs more bytes
                continue
            if self._first:
                pos = _SPACES.match(buf, pos, limit).end()  # type: ignore[union-attr]
                if pos >= limit:
                    break
                c = buf[pos]
                if c == 0x3B:  # an empty statement: no reply, not counted
                    if not self._decide(pos):
                        break
                    pos += 1
                    continue
                if c == 0:
                    self.end = pos
                    self.done = True
                    break
                if c == 0x2D or c == 0x2F:  # "-" or "/": maybe a comment
                    if pos + 1 >= limit:
                        break
                    if buf[pos + 1] == (0x2D if c == 0x2D else 0x2A):
                        if not self._decide(pos):
                            break
                        self._open, self._depth = (_LINE if c == 0x2D else _BLOCK), 0
                        pos += 2
                        continue
                elif c in self._first_letters:
                    decided = self._first_word(buf, pos, limit)
                    if not decided:
                        break
                self._first = False
                if pos == self._start and c in b"'\"$":
                    # The bytes before the text (a message header) must not take part
                    # in the pattern's look-behind prefix tests: decide here.
                    opened = self._opener(buf, pos, limit)
                    if opened is None:
                        break
                    pos = opened
                    continue
            body = self._body if self._current is None else self._body_in_lead
            run = pos
            pos = body.match(buf, pos, limit).end()  # type: ignore[union-attr]
            if pos > run:
                self._count += buf.count(b";", run, pos)
            if pos >= limit:
                break
            c = buf[pos]
            if c == 0x3B:  # ;
                if not self._decide(pos):
                    break
                self._statement_end(pos)
                self._first = True
                pos += 1
            elif c == 0:
                self._statement_end(pos)
                self.end = pos
                self.done = True
            else:
                opened = self._opener(buf, pos, limit)
                if opened is None:
                    break
                pos = opened
        self._pos = pos
        return self.done

    # --- statements -----------------------------------------------------------------

    def _first_word(self, buf: bytes | bytearray, pos: int, limit: int) -> bool:
        """Judge the word starting a statement; False when more bytes are needed."""
        m = _WORD.match(buf, pos, limit)
        assert m is not None
        if m.end() >= limit and m.end() - pos <= _LONGEST_WORD:
            return False  # the word may go on
        word = bytes(buf[pos : m.end()]).lower()
        if not self._decide(pos):
            return True
        if word == _ROUTINE_WORD and not self._routine_seen:
            window_end = min(limit, pos + _ROUTINE_WINDOW)
            nul = buf.find(b"\0", pos, window_end)
            if nul < 0 and window_end < pos + _ROUTINE_WINDOW:
                return False
            stop = nul if nul >= 0 else window_end
            if _ROUTINE.match(buf, pos, stop) or (
                # a comment too long for the window could hide FUNCTION: assume a routine
                nul < 0 and (buf.find(b"/*", pos, stop) >= 0 or buf.find(b"--", pos, stop) >= 0)
            ):
                self._routine_seen = True
        if word in self._words:
            if len(self.leads) >= MAX_LEADS:
                self._give_up()
                return True
            self._current = Lead(word, pos, self._count, after_routine=self._routine_seen)
            self.leads.append(self._current)
        return True

    def _decide(self, pos: int) -> bool:
        """Count one look by Python at ``pos``; False (and uncertain) beyond the allowance."""
        self._decisions += 1
        if self._decisions > DECISION_ALLOWANCE + (pos - self._start) * DECISIONS_PER_BYTE:
            self._give_up()
            return False
        return True

    def _statement_end(self, pos: int) -> None:
        self._count += 1
        if self._current is not None:
            self._current.end = pos
            self._current = None

    # --- constructs that span reads ---------------------------------------------------

    def _opener(self, buf: bytes | bytearray, pos: int, limit: int) -> int | None:
        """Open the construct at ``pos`` that the body pattern could not take whole.

        Returns the offset to continue from, or None when more bytes are needed.
        """
        c = buf[pos]
        if not self._decide(pos):
            return None
        nxt = buf[pos + 1] if pos + 1 < limit else -1
        if c == 0x2D or c == 0x2F:  # "--" or "/*" not closed yet
            if nxt < 0:
                return None
            self._open, self._depth = (_LINE if c == 0x2D else _BLOCK), 0
            return pos + 2
        if c == 0x22:  # "
            self._open, self._closer = _QUOTE, b'"'
            return pos + 1
        if c == 0x27:  # '
            kind = self._quote_kind(buf, pos)
            if kind is None:
                return self._give_up()
            self._open, self._closer = kind, b"'"
            return pos + 1
        if c == 0x24:  # $
            if pos > self._start and buf[pos - 1] in _IDENT_BYTES:
                return self._give_up()  # after a digit or "$": a word goes on, or not
            m = _DOLLAR_OPENER.match(buf, pos, limit)
            if m is not None and self._masked and not m.group().isascii():
                return self._give_up()  # masked tags: different characters look alike
            if m is not None:
                self._open, self._closer = _DOLLAR, bytes(m.group())
                return m.end()
            prefix = _DOLLAR_PREFIX.match(buf, pos, limit)
            assert prefix is not None
            if prefix.end() >= limit:
                return None
            return pos + 1  # a lone "$" (PostgreSQL's dolqfailed rule)
        return self._give_up()  # pragma: no cover - the body pattern takes anything else

    def _quote_kind(self, buf: bytes | bytearray, pos: int) -> int | None:
        """_QUOTE or _ESCAPE for the string starting at ``pos``; None if uncertain."""
        # Bytes before the text (a message header) count as a space.
        prev = buf[pos - 1] if pos > self._start else 0x20
        before = buf[pos - 2] if pos - 1 > self._start else 0x20
        at_token_start = before not in _IDENT_BYTES
        if prev in b"eEbBxX":
            if before in _DIGITS or before == 0x24:
                # 1e'..': an E string to PostgreSQL 15, an error to 16; $e'..': "$" ends
                # a word or stands alone, which only the tokens before it tell
                return None
            if at_token_start:
                return _ESCAPE if prev in b"eE" else _BITS
        if prev == 0x26 and before in b"uU":  # U&'...'
            third = buf[pos - 3] if pos - 2 > self._start else 0x20
            if third not in _IDENT_BYTES and not self._scs:
                return None  # rejected by the server when standard_conforming_strings is off
        return _QUOTE if self._scs else _ESCAPE

    def _give_up(self) -> None:
        self.uncertain = True
        self.done = True
        return None

    def _continue_open(self, buf: bytes | bytearray, pos: int, limit: int) -> int:
        kind = self._open
        if kind == _LINE:
            m = _LINE_END.search(buf, pos, limit)
            if m is None:
                return limit
            self._open = None
            return m.start() if buf[m.start()] == 0 else m.end()
        if kind == _BLOCK:
            while True:
                m = _BLOCK_TOKEN.search(buf, pos, limit)
                if m is None:
                    # keep a trailing "/" or "*" that the next byte may complete
                    return limit - 1 if limit - 1 >= pos and buf[limit - 1] in b"/*" else limit
                if buf[m.start()] == 0:
                    self._give_up()
                    return m.start()
                pos = m.end()
                if buf[m.start()] == 0x2F:
                    self._depth += 1
                elif self._depth:
                    self._depth -= 1
                else:
                    self._open = None
                    return pos
        if kind == _DOLLAR:
            closer = self._closer
            at = buf.find(closer, pos, limit)
            if at < 0:
                nul = buf.find(b"\0", pos, limit)
                if nul >= 0:
                    self._give_up()
                    return nul
                return max(pos, limit - len(closer) + 1)
            self._open = None
            return at + len(closer)
        if kind == _CONTINUATION:
            return self._continuation(buf, pos, limit)
        if kind == _CONTINUATION_COMMENT:
            m = _LINE_END.search(buf, pos, limit)
            if m is None:
                return limit
            if buf[m.start()] == 0:
                self._open = None
                return m.start()
            self._open, self._newline_seen = _CONTINUATION, True
            return m.end()
        if kind == _BITS:
            p = _BITS_BODY.match(buf, pos, limit).end()  # type: ignore[union-attr]
            if p >= limit:
                return p
            if buf[p] == 0:
                self._give_up()
                return p
            self._open, self._newline_seen, self._continues = _CONTINUATION, False, _BITS
            return p + 1
        body = _ESC_BODY if kind == _ESCAPE else _STD_BODY[self._closer[0]]
        p = body.match(buf, pos, limit).end()  # type: ignore[union-attr]
        if p >= limit:
            return p
        if buf[p] == 0 or (buf[p] != self._closer[0] and p + 1 < limit and buf[p + 1] == 0):
            self._give_up()  # unterminated: the server rejects the whole text
            return p
        if p + 1 >= limit:  # the quote (or backslash) there needs the byte after it
            return p
        if kind == _ESCAPE:
            self._open, self._newline_seen, self._continues = _CONTINUATION, False, _ESCAPE
        else:
            self._open = None
        return p + 1

    def _continuation(self, buf: bytes | bytearray, pos: int, limit: int) -> int:
        """After an escape, bit or hex string: whitespace with a newline, then a quote,
        continues it (PostgreSQL's ``quotecontinue``); anything else ends it."""
        while pos < limit:
            c = buf[pos]
            if c == 0x20 or c == 0x09 or c == 0x0C:
                pos += 1
            elif c == 0x0A or c == 0x0D:
                self._newline_seen = True
                pos += 1
            elif c == 0x0B:  # \v: whitespace to PostgreSQL 16, not to 15
                self._give_up()
                return pos
            elif c == 0x2D:
                if pos + 1 >= limit:
                    return pos
                if buf[pos + 1] != 0x2D:
                    break
                m = _LINE_END.search(buf, pos, limit)
                if m is None:
                    self._open = _CONTINUATION_COMMENT
                    return limit
                if buf[m.start()] == 0:
                    pos = m.start()
                    break
                self._newline_seen = True
                pos = m.end()
            elif c == 0x27 and self._newline_seen:
                self._open = self._continues
                return pos + 1
            else:
                break
        else:
            return pos
        self._open = None
        return pos


def lead_statements(
    text: bytes,
    *,
    standard_conforming_strings: bool = True,
    words: frozenset[bytes] = CLEAN_WORDS,
) -> OutlineScanner:
    """Scan a whole text at once (it need not end with NUL); the finished scanner."""
    scanner = OutlineScanner(standard_conforming_strings=standard_conforming_strings, words=words)
    data = text if text.endswith(b"\0") else text + b"\0"
    scanner.feed(data, len(data))
    return scanner


# Trail bytes that look like ASCII, per client-only encoding (PostgreSQL's pg_*_mblen).
_TWO_BYTE_CHAR = {
    "SJIS": rb"[\x80-\xa0\xe0-\xff][\x00-\xff]",
    "SHIFT_JIS_2004": rb"[\x80-\xa0\xe0-\xff][\x00-\xff]",
    "BIG5": rb"[\x80-\xff][\x00-\xff]",
    "GBK": rb"[\x80-\xff][\x00-\xff]",
    "UHC": rb"[\x80-\xff][\x00-\xff]",
    # 4-byte characters keep their ASCII digits: digits never end a string or a comment.
    "GB18030": rb"[\x81-\xfe][\x40-\x7e\x80-\xfe]",
}
_MASKS = {name: re.compile(pattern) for name, pattern in _TWO_BYTE_CHAR.items()}


def needs_mask(encoding: str) -> bool:
    """True for client encodings whose multibyte characters can hold ASCII bytes."""
    return encoding in _MASKS


def mask_trail_bytes(text: bytes, encoding: str) -> bytes:
    """``text`` with every two-byte character of ``encoding`` replaced by ``\\x80\\x80``:
    same length, same offsets, no ASCII inside a character."""
    return _MASKS[encoding].sub(b"\x80\x80", text)


#: Texts in the encodings that need masking are judged only up to this size (bytes): they
#: are masked and scanned in one go once whole.
MAX_MASKED_TEXT = 1 << 20


class MaskedScanner(OutlineScanner):
    """An :class:`OutlineScanner` for the client encodings whose multibyte characters can
    hold ASCII bytes: waits for the whole text (at most :data:`MAX_MASKED_TEXT` bytes,
    else uncertain), masks its trail bytes, then scans the masked copy."""

    __slots__ = ("_searched",)

    def __init__(self, encoding: str, *, start: int, **options: object) -> None:
        super().__init__(start=start, masked=True, **options)  # type: ignore[arg-type]
        self.encoding = encoding
        self._searched = start

    def feed(self, buf: bytes | bytearray, limit: int) -> bool:
        if self.done:
            return True
        nul = buf.find(b"\0", self._searched, limit)
        if nul < 0:
            self._searched = limit
            if limit - self._start > MAX_MASKED_TEXT:
                self._give_up()
            return self.done
        if nul - self._start > MAX_MASKED_TEXT:
            self._give_up()
            return True
        text = bytes(buf[self._start : nul + 1])
        padded = b"\x20" * self._start + mask_trail_bytes(text, self.encoding)
        return super().feed(padded, len(padded))
