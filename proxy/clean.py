"""CLEAN CONNECTION on stock PostgreSQL: finding it, the rewrite, the audit.

The frontend stream scans each Query/Parse text of a logged-in session with a
:class:`~grammar.outline.OutlineScanner` (:meth:`CleanConnectionDialect.scanner`), then
asks :func:`rewrite_text` for the rewrite. Only the statements the scan found starting
with ``clean`` (or ``explain``) are decoded (strictly, in the session's client encoding) and
parsed; every valid one is replaced, in place, by the ``DO`` block of
:mod:`proxy.clean_program` (``EXPLAIN CLEAN CONNECTION``: by its ``SELECT``), which
the server runs in the caller's own session with the caller's privileges (semantics in
README.md, "CLEAN CONNECTION"). The proxy then shapes that statement's replies
(:mod:`proxy.streams`): tag ``CLEAN CONNECTION``, no PL/pgSQL CONTEXT, and the final
``INFO`` line with the counts is consumed for the audit record, never forwarded
(:class:`CleanPlan`); tag ``EXPLAIN`` and the statement's own errors (:class:`ExplainPlan`).

Certain or nothing: whatever the scan or the decoding cannot judge exactly is forwarded
unchanged, and the server rejects the unknown statement as a syntax error.

A string holding an *invalid* CLEAN CONNECTION is sent unchanged: the server rejects the
whole string at the ``CLEAN`` token (nothing in it runs, the transaction state is the
server's), and the proxy replaces that syntax error's text and position with the
grammar's (``SyntaxFix``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from pglast.enums import DiscardMode
from pglast.parser import ParseError, parse_sql

from grammar import CleanConnection, GrammarError, might_contain_clean
from grammar.clean_connection import parse_tokens
from grammar.og_scan import TokenStream
from grammar.outline import (
    CLEAN_WORDS,
    MAX_LEAD_STATEMENT,
    TRACKING_WORDS,
    Lead,
    MaskedScanner,
    OutlineScanner,
    needs_mask,
)

from .audit import AuditRecord, AuditTrail, decode_caller, decode_sessions
from .clean_program import (
    AUDIT_MARKER,
    DEFAULT_CHECK_SECONDS,
    DEFAULT_WAIT_SECONDS,
    WITHOUT_FORCE_MODES,
    explain_error,
    render_explain,
    render_program,
)
from .streams import (
    DISCARD_ALL,
    UNKNOWN_OUTCOMES,
    Fields,
    ReplyShaping,
    Rewrite,
    SessionState,
    StatementPlan,
    SyntaxFix,
)

if TYPE_CHECKING:
    from .session import Session


# PostgreSQL client encodings → Python codecs. Where PostgreSQL's encoding is a Windows
# code page under another name (its SJIS is WIN932, BIG5 is WIN950, GBK is WIN936, UHC is
# WIN949), the code page's codec is the exact one.
_CODECS = {
    "UTF8": "utf-8",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "WIN866": "cp866",
    "WIN874": "cp874",
    **{f"WIN{n}": f"cp{n}" for n in range(1250, 1259)},
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "cp950",
    "GBK": "cp936",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}
# Encodings where one byte is one character (positions are byte offsets).
_SINGLE_BYTE = frozenset(
    {"LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7", "LATIN8"}
    | {"LATIN9", "LATIN10", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8"}
    | {"KOI8R", "KOI8U", "WIN866", "WIN874", *(f"WIN{n}" for n in range(1250, 1259))}
)
_NOT_UTF8_CONTINUATION = bytes(b for b in range(256) if not 0x80 <= b < 0xC0)


class _Text:
    """One Query/Parse text ``buf[start:end]`` in the client encoding ``encoding``:
    strict decoding of pieces and character positions as the server counts them."""

    def __init__(self, buf: bytes, start: int, end: int, encoding: str) -> None:
        self.buf, self.start, self.end, self.encoding = buf, start, end, encoding
        self.codec = _CODECS.get(encoding)

    def is_ascii(self, a: int, b: int) -> bool:
        # a slice and bytes.isascii (SIMD) beat any regex over a 100 MB text
        return self.buf[a:b].isascii()

    def decode(self, a: int, b: int) -> str:
        """``buf[a:b]`` decoded; UnicodeDecodeError (or LookupError) when not certain."""
        piece = self.buf[a:b]
        if self.codec is None and not piece.isascii():
            raise LookupError(self.encoding)
        return piece.decode(self.codec or "ascii")

    def chars(self, a: int, b: int) -> int:
        """How many characters the server counts in ``buf[a:b]``."""
        if self.encoding in _SINGLE_BYTE:
            return b - a
        piece = self.buf[a:b]
        if piece.isascii():
            return b - a
        if self.encoding == "UTF8":
            return len(piece) - len(piece.translate(None, _NOT_UTF8_CONTINUATION))
        return len(piece.decode(self.codec or "latin-1", "replace"))


def rewrite_text(
    buf: bytes,
    start: int,
    end: int,
    scan: OutlineScanner,
    *,
    encoding: str,
    settled: bool,
    wait_seconds: float,
    check_seconds: float,
    without_force: str = "idle",
    peers: Callable[[], Mapping[int, str]] | None = None,
) -> Rewrite | None:
    """The :class:`Rewrite` of the text ``buf[start:end]`` whose scan is finished, or None.

    Certain or nothing: when the scan could not judge the text, when a lead statement is
    too long, follows a routine body or does not decode strictly, when the text's bytes
    could be read differently by the time the server reads them (``settled`` false and
    non-ASCII bytes or backslashes in it), nothing is rewritten and the server rejects
    any CLEAN statement as a syntax error. ``wait_seconds`` bounds the wait for terminated
    sessions to exit; ``check_seconds`` how long CHECK waits for other sessions to leave;
    ``without_force`` what a statement without FORCE terminates (``idle`` or ``none``).
    ``EXPLAIN CLEAN CONNECTION ...`` statements become the query of
    :func:`~proxy.clean_program.render_explain`, with the client addresses ``peers()``
    gives at this moment (the real clients of the sessions through the proxy, backend
    pid → ``host:port``; a CLEAN reads them again when it is sent, for its audit).
    """
    if scan.uncertain:
        fix = _uncertain_fix(buf, start, end, scan, encoding, settled)
        forget: tuple[bytes | None, ...] = (None,) if scan.tracking else ()
        if fix is not None:
            return Rewrite(None, syntax_fix=fix, redefines=forget)
        return Rewrite(None, redefines=forget) if scan.tracking else None
    if not scan.leads:
        return None
    text = _Text(buf, start, end, encoding)
    if not settled and (not text.is_ascii(start, end) or buf.find(b"\\", start, end) >= 0):
        return _nothing(scan)
    redefines = _redefined_names(text, scan.leads)
    cleans = [lead for lead in scan.leads if lead.word == b"clean" or _may_explain(lead)]
    if not cleans:
        return Rewrite(None, redefines=redefines)
    if any(lead.too_long or lead.after_routine or lead.index < 0 for lead in cleans):
        return Rewrite(None, redefines=redefines)
    scs = scan.standard_conforming_strings
    try:
        positions = _char_positions(text, cleans)
        total = positions[-1]
        parsed = [
            _parse_lead(text, lead, at, total, scs)
            if lead.word == b"clean"
            else _parse_explain_lead(text, lead, at, total, scs)
            for lead, at in zip(cleans, positions, strict=False)
        ]
    except (UnicodeError, LookupError):
        return Rewrite(None, redefines=redefines)
    statements = [p for p in parsed if p is not None]  # None: an EXPLAIN of something else
    if not statements:
        return Rewrite(None, redefines=redefines)
    errors = [p.error for p in statements if p.error is not None]
    if errors:
        fix = _syntax_fix(text, statements[0].char_start, errors[0])
        return Rewrite(None, syntax_fix=fix, redefines=redefines)
    options = _Options(wait_seconds, check_seconds, without_force, peers)
    return _rewrite_valid(text, scan, statements, options, redefines)


def _syntax_fix(text: _Text, clean_at: int, error: GrammarError) -> SyntaxFix:
    """The server reports the whole string's syntax error at the first CLEAN token (the
    character ``clean_at``); the client is told openGauss's ``error`` instead."""
    return SyntaxFix(
        server_position=str(clean_at + 1).encode(),
        message=error.message.encode(text.codec or "ascii", "replace"),
        position=str(error.position).encode(),
    )


def _uncertain_fix(
    buf: bytes, start: int, end: int, scan: OutlineScanner, encoding: str, settled: bool
) -> SyntaxFix | None:
    """openGauss's error for a text the outline gave up on (an unterminated quote or
    comment, a version-dependent token...), or None.

    Statement starts found before the outline gave up are certain; the statement it gave
    up in runs to the end of the text, as an unterminated quote or comment does. The
    CLEAN statements are parsed in order until one fails (that is the fix: nothing in the
    string runs either way, the server rejects it at the first CLEAN) or the outline's
    certain part ends; a CLEAN that still parses there gets no fix. ``EXPLAIN CLEAN ...``
    statements count as their CLEAN statement (the server's error is at their CLEAN).
    """
    cleans = [lead for lead in scan.leads if lead.word == b"clean" or _may_explain(lead)]
    if not cleans:
        return None
    text = _Text(buf, start, end, encoding)
    if not settled and (not text.is_ascii(start, end) or buf.find(b"\\", start, end) >= 0):
        return None
    scs = scan.standard_conforming_strings
    first_clean: int | None = None  # where the server reports the string's syntax error
    try:
        positions = _char_positions(text, cleans)
        for lead, at in zip(cleans, positions, strict=False):
            stop = lead.end if lead.end >= 0 else end
            if lead.after_routine or lead.index < 0 or stop - lead.start > MAX_LEAD_STATEMENT:
                return None
            if lead.word == b"clean":
                parsed: _Parsed | None = _parse_lead(text, lead, at, positions[-1], scs)
            else:  # EXPLAIN CLEAN ..., or an EXPLAIN of something else (not ours)
                parsed = _parse_explain_lead(text, lead, at, positions[-1], scs)
            if parsed is not None:
                if first_clean is None:
                    first_clean = parsed.char_start
                if parsed.error is not None:
                    return _syntax_fix(text, first_clean, parsed.error)
            if lead.end < 0:
                return None
    except (UnicodeError, LookupError):
        return None
    return None


def _nothing(scan: OutlineScanner) -> Rewrite | None:
    """No rewrite, but a text that may redefine tracked statements forgets them all."""
    if any(lead.word not in CLEAN_WORDS for lead in scan.leads):
        return Rewrite(None, redefines=(None,))
    return None


class _Parsed:
    """A CLEAN CONNECTION statement of a text: where it is and what it says."""

    __slots__ = (
        "body_end",
        "body_start",
        "char_start",
        "clean",
        "error",
        "explain",
        "index",
        "lead_char_start",
    )

    def __init__(self, lead: Lead, body_end: int, char_start: int) -> None:
        self.body_start, self.body_end, self.char_start = lead.start, body_end, char_start
        self.index = lead.index
        self.clean: CleanConnection | None = None
        self.error: GrammarError | None = None
        # EXPLAIN CLEAN CONNECTION: body_start and lead_char_start are those of EXPLAIN,
        # char_start that of CLEAN (where the server reports a syntax error).
        self.explain = False
        self.lead_char_start = char_start


def _may_explain(lead: Lead) -> bool:
    """An EXPLAIN statement worth decoding: it may be EXPLAIN CLEAN CONNECTION. One that
    cannot be judged exactly (too long, after a routine body) is left alone: the server
    rejects an EXPLAIN CLEAN there as a syntax error, and any other EXPLAIN is its own."""
    return lead.word == b"explain" and not (lead.too_long or lead.after_routine)


def _parse_explain_lead(
    text: _Text, lead: Lead, char_start: int, total: int, standard_conforming_strings: bool
) -> _Parsed | None:
    """Parse ``EXPLAIN CLEAN ...`` as its CLEAN statement (positions over the whole text,
    the server's syntax error expected at CLEAN); None for any other EXPLAIN, which is
    forwarded unchanged. Only EXPLAIN's next token is scanned before deciding."""
    source = text.decode(lead.start, _statement_bytes(text, lead))
    second = TokenStream(source, standard_conforming_strings=standard_conforming_strings).get(1)
    if second is None or second.name != "CLEAN":
        return None
    at = second.start
    clean_lead = Lead(
        b"clean",
        lead.start + len(source[:at].encode(text.codec or "ascii")),
        lead.index,
        lead.end,
        lead.after_routine,
    )
    parsed = _parse_lead(text, clean_lead, char_start + at, total, standard_conforming_strings)
    parsed.explain = True
    parsed.body_start = lead.start
    parsed.lead_char_start = char_start
    return parsed


def _statement_bytes(text: _Text, lead: Lead) -> int:
    """The end of the lead statement's text, its terminating ``;`` included (the end of
    the text when the outline gave up inside it)."""
    if lead.end < 0:
        return text.end
    return lead.end + 1 if lead.end < text.end and text.buf[lead.end] == 0x3B else lead.end


def _char_positions(text: _Text, leads: list[Lead]) -> list[int]:
    """The character offset of each lead in the text, then the text's length in characters
    (each byte counted once, however many leads)."""
    positions = []
    at, chars = text.start, 0
    for lead in leads:
        chars += text.chars(at, lead.start)
        positions.append(chars)
        at = lead.start
    positions.append(chars + text.chars(at, text.end))
    return positions


def _parse_lead(
    text: _Text, lead: Lead, char_start: int, total: int, standard_conforming_strings: bool
) -> _Parsed:
    """Parse one statement starting with the word ``clean`` (``char_start`` characters
    into a text of ``total``) as openGauss does: a valid CLEAN CONNECTION, or the error
    openGauss reports for it (whatever follows ``clean``; positions over the whole text).
    UnicodeError/LookupError when the statement does not decode strictly."""
    stop = _statement_bytes(text, lead)
    source = text.decode(lead.start, stop)
    codec = text.codec or "ascii"
    stream = TokenStream(source, standard_conforming_strings=standard_conforming_strings)
    parsed = _Parsed(lead, stop, char_start)
    try:
        parsed.clean = parse_tokens(source, stream, total - char_start + 1)
    except GrammarError as exc:
        parsed.error = GrammarError(exc.message, exc.position + char_start)
        return parsed
    tokens = stream.tokens  # all of them: the parser read to the end
    last = tokens[-2] if tokens[-1].name == "ASCII_59" and len(tokens) > 1 else tokens[-1]
    parsed.body_end = lead.start + len(source[: last.end].encode(codec))
    return parsed


def _redefined_names(text: _Text, leads: list[Lead]) -> tuple[bytes | None, ...]:
    """Prepared-statement names the text deallocates or redefines by SQL (None: all of
    them; DISCARD_ALL: all of them and every portal)."""
    names: list[bytes | None] = []
    for lead in leads:
        if lead.word in CLEAN_WORDS:
            continue
        if lead.too_long or lead.after_routine:
            return (None,)
        try:
            source = text.decode(lead.start, _statement_bytes(text, lead))
            (raw,) = parse_sql(source)
        except (UnicodeError, LookupError, ParseError, ValueError):
            continue  # the server rejects the whole text: nothing is redefined
        node = raw.stmt
        kind = type(node).__name__
        if kind == "DeallocateStmt":
            names.append(None if node.name is None else node.name.encode(text.codec or "ascii"))
        elif kind == "PrepareStmt":
            names.append(node.name.encode(text.codec or "ascii"))
        elif kind == "DiscardStmt" and node.target == DiscardMode.DISCARD_ALL:
            names.append(DISCARD_ALL)
    return tuple(names)


class _Options(NamedTuple):
    """How valid statements are rewritten (see :func:`rewrite_text`)."""

    wait_seconds: float
    check_seconds: float
    without_force: str
    peers: Callable[[], Mapping[int, str]] | None


def _rewrite_valid(
    text: _Text,
    scan: OutlineScanner,
    statements: list[_Parsed],
    options: _Options,
    redefines: tuple[bytes | None, ...],
) -> Rewrite:
    view = memoryview(text.buf)
    parts: list[bytes | memoryview] = []
    planned: list[tuple[int, StatementPlan]] = []
    spans: list[tuple[int, int, int]] = []
    cursor = text.start
    peers: Mapping[int, str] | None = None
    for statement in statements:
        assert statement.clean is not None
        original = text.decode(statement.body_start, statement.body_end)
        plan: StatementPlan
        if statement.explain:
            # In the query itself, computed there under PostgreSQL's visibility rules:
            # rows that reach the client by any path (SQL FETCH from its portal too) are
            # right, and no row of another statement is ever completed by the proxy.
            if peers is None:
                peers = options.peers() if options.peers is not None else {}
            sql = render_explain(
                statement.clean,
                codec=text.codec or "ascii",
                encoding=text.encoding,
                without_force=options.without_force,
                peers=peers,
            )
            plan = EXPLAIN_PLAN
        else:
            token = secrets.token_hex(8)
            sql = render_program(
                statement.clean,
                marker_token=token,
                codec=text.codec or "ascii",
                encoding=text.encoding,
                wait_seconds=options.wait_seconds,
                check_seconds=options.check_seconds,
                without_force=options.without_force,
            )
            plan = CleanPlan(original, options.peers, AUDIT_MARKER + token.encode() + b" ")
        program = sql.encode("ascii")
        parts.append(view[cursor : statement.body_start])
        parts.append(program)
        spans.append((statement.lead_char_start, len(original), len(program)))
        cursor = statement.body_end
        planned.append((statement.index, plan))
    parts.append(view[cursor : text.end])
    return Rewrite(b"".join(parts), planned=tuple(planned), spans=tuple(spans), redefines=redefines)


CLEAN_CONNECTION_TAG = b"CLEAN CONNECTION"
_FIELD_MESSAGE = ord("M")
_FIELD_CONTEXT = ord("W")
_FIELD_DETAIL = ord("D")


class CleanPlan:
    """The reply shaping of one rewritten CLEAN CONNECTION statement (``text``: the
    client's original statement, for the audit; ``marker``: what its program's INFO lines
    start with, :data:`AUDIT_MARKER` and a random token of this rewrite, so that no other
    statement, however its replies were attributed, can pass for it)."""

    __slots__ = ("marker", "peers", "text")

    def __init__(
        self,
        text: str,
        peers: Callable[[], Mapping[int, str]] | None = None,
        marker: bytes = AUDIT_MARKER,
    ) -> None:
        self.text = text
        self.peers = peers  # the real clients of the sessions through the proxy, now
        self.marker = marker

    def start(self) -> CleanRun:
        return CleanRun(self.text, self.peers() if self.peers is not None else {}, self.marker)


class CleanRun:
    """One execution of a CLEAN CONNECTION: the tag becomes ``CLEAN CONNECTION``, the
    program's PL/pgSQL CONTEXT lines go (a native command has none) and its INFO lines
    for the audit record (the sessions terminated and skipped, once signalled; then how
    many remain) are consumed, never forwarded."""

    __slots__ = ("caller", "counts", "marker", "peers", "ran", "sent_at", "sessions", "text")

    def __init__(
        self, text: str, peers: Mapping[int, str] | None = None, marker: bytes = AUDIT_MARKER
    ) -> None:
        self.text = text
        self.marker = marker
        # Sessions through the proxy when the statement was sent (backend pid → real
        # client): those it terminates are closed, and gone from the registry, by its end.
        self.peers = peers or {}
        self.sent_at = time.monotonic()
        self.counts: dict[str, int] = {}
        self.sessions: list[dict[str, object]] = []  # terminated and skipped, as reported
        self.caller: dict[str, str] = {}  # the role and application_name it ran with
        # The program ran: its INFO came, or its error came from inside it (its CONTEXT).
        # An error without (the server skipped the Execute after an earlier message of
        # the group failed; a portal run twice; an aborted transaction) is not its own.
        self.ran = False

    def completed(self, tag: bytes) -> bytes:
        # Not the program's (its first INFO never came): another statement's reply that
        # reply attribution pointed here, which keeps its own tag.
        return CLEAN_CONNECTION_TAG if self.ran else tag

    def notice(self, fields: Fields) -> Fields | None:
        text = dict(fields).get(_FIELD_MESSAGE, b"")
        if text.startswith(self.marker):
            self.ran = True
            detail = dict(fields).get(_FIELD_DETAIL)
            if text == self.marker + _CALLER:
                self.caller = decode_caller(detail or b"")
                return None
            self.counts.update(_parse_counts(text[len(self.marker) :]))
            if detail:
                self.sessions = decode_sessions(detail)
            return None
        return _without_context(fields) if self.ran else fields

    def failed(self, fields: Fields) -> Fields:
        if any(code == _FIELD_CONTEXT and _PROGRAM_CONTEXT in value for code, value in fields):
            self.ran = True
        return _without_context(fields) if self.ran else fields


_CALLER = b"caller"
"""After the marker, the program's first INFO: the role and application_name it runs
with. It comes before anything else the program sends."""

_PROGRAM_CONTEXT = b"inline_code_block"
"""In the CONTEXT of an error raised inside a DO block (the name is not translated)."""


def _without_context(fields: Fields) -> Fields:
    kept = [(code, value) for code, value in fields if code != _FIELD_CONTEXT]
    return fields if len(kept) == len(fields) else kept


def _parse_counts(text: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in text.split():
        name, _, value = item.partition(b"=")
        if value.isdigit():
            counts[name.decode("ascii", "replace")] = int(value)
    return counts


EXPLAIN_TAG = b"EXPLAIN"
_FIELD_SEVERITY = ord("S")
_FIELD_SEVERITY_RAW = ord("V")
_FIELD_CODE = ord("C")
_INVALID_TEXT = b"22P02"


class ExplainPlan:
    """The reply shaping of a rewritten EXPLAIN CLEAN CONNECTION (stateless: one instance
    serves every execution): the tag becomes ``EXPLAIN``, as PostgreSQL's EXPLAIN sends,
    and the query's planned failure (a 22P02 carrying
    :data:`~proxy.clean_program.EXPLAIN_ERROR_PREFIX`) becomes the error the statement
    itself would raise. Rows, notices and every other error pass unchanged."""

    __slots__ = ()

    def start(self) -> ExplainPlan:
        return self

    def completed(self, tag: bytes) -> bytes:
        return EXPLAIN_TAG

    def notice(self, fields: Fields) -> Fields | None:
        return fields

    def failed(self, fields: Fields) -> Fields:
        found = dict(fields)
        if found.get(_FIELD_CODE) != _INVALID_TEXT:
            return fields
        planned = explain_error(found.get(_FIELD_MESSAGE, b""))
        if planned is None:
            return fields
        sqlstate, text = planned
        kept = [
            (code, value)
            for code, value in fields
            if code in (_FIELD_SEVERITY, _FIELD_SEVERITY_RAW)
        ]
        return [*kept, (_FIELD_CODE, sqlstate), (_FIELD_MESSAGE, text)]


EXPLAIN_PLAN = ExplainPlan()


class CleanConnectionDialect:
    """The openGauss CLEAN CONNECTION statement, for :class:`proxy.server.ProxyServer`.

    Stateless: what a session knows (its encoding, its string syntax) comes with each call
    in its :class:`~proxy.streams.SessionState`.
    """

    def __init__(
        self,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
        *,
        without_force: str = "idle",
        peers: Callable[[], Mapping[int, str]] | None = None,
    ) -> None:
        if without_force not in WITHOUT_FORCE_MODES:
            raise ValueError(f"without_force must be one of {WITHOUT_FORCE_MODES}")
        self.wait_seconds = wait_seconds
        self.check_seconds = check_seconds
        self.without_force = without_force
        self.peers = peers
        self.audit = AuditTrail()  # where audit records go (replaced by the application)

    statements = "CLEAN CONNECTION statements"
    might_rewrite = staticmethod(might_contain_clean)
    rewrite_word = b"clean"
    """``might_rewrite`` is exactly "this word occurs, in any case" (see
    :class:`~proxy.streams.Dialect`): the compiled stream tests it without a call."""

    @staticmethod
    def might_redefine(body: bytes) -> bool:
        """Could ``body`` deallocate or redefine a prepared statement by SQL?"""
        lowered = body.lower()
        return (
            lowered.find(b"deallocate") >= 0
            or lowered.find(b"prepare") >= 0
            or lowered.find(b"discard") >= 0
        )

    def scanner(self, state: SessionState, start: int, tracking: bool) -> OutlineScanner:
        words = TRACKING_WORDS if tracking else CLEAN_WORDS
        scs = state.standard_conforming_strings
        scanner: OutlineScanner
        if needs_mask(state.client_encoding):
            scanner = MaskedScanner(
                state.client_encoding, start=start, standard_conforming_strings=scs, words=words
            )
        else:
            scanner = OutlineScanner(start=start, standard_conforming_strings=scs, words=words)
            scanner.encoding = state.client_encoding
        return scanner

    def rewrite(
        self,
        buf: bytes,
        start: int,
        end: int,
        scan: OutlineScanner,
        state: SessionState,
        settled: bool,
    ) -> Rewrite | None:
        if (
            scan.encoding != state.client_encoding
            or scan.standard_conforming_strings != state.standard_conforming_strings
        ):
            return _nothing(scan)  # the session changed its settings while the text arrived
        rewrite = rewrite_text(
            buf,
            start,
            end,
            scan,
            encoding=state.client_encoding,
            settled=settled,
            wait_seconds=self.wait_seconds,
            check_seconds=self.check_seconds,
            without_force=self.without_force,
            peers=self.peers,
        )
        return rewrite

    def outcome(self, session: Session, execution: ReplyShaping, error: Fields | None) -> None:
        """One record per execution of a CLEAN CONNECTION that ran (see CleanRun.ran), or
        that was sent and whose outcome cannot be known (:data:`UNKNOWN_OUTCOMES`)."""
        if isinstance(execution, CleanRun) and (execution.ran or error in UNKNOWN_OUTCOMES):
            self.audit.emit(audit_record(session, execution, error))


def audit_record(session: Session, run: CleanRun, error: Fields | None) -> AuditRecord:
    """The audit record of one execution of a CLEAN CONNECTION statement."""
    record = AuditRecord(
        conn=session.connection_id,
        client=session.client_address,
        user=session.user,
        db=session.database,
        app=run.caller.get("application_name", session.application_name),
        role=run.caller.get("role", ""),
        statement=run.text,
        result="ok" if error is None else "unknown" if error in UNKNOWN_OUTCOMES else "error",
        duration=round(time.monotonic() - run.sent_at, 6),
        sessions=run.sessions,
    )
    for entry in record.sessions:
        real = run.peers.get(entry.get("pid"))  # type: ignore[arg-type]
        if real is not None and entry.get("outcome") == "terminated":
            entry["real_client"] = real
    # Known once the sessions were signalled, even if the statement then failed (it was
    # cancelled while waiting for them to exit, say): they are terminated all the same.
    record.terminated = run.counts.get("terminated", 0)
    record.skipped = run.counts.get("skipped", 0)
    record.remaining = run.counts.get("remaining", 0)
    if error is not None:
        fields = dict(error)
        record.sqlstate = fields.get(ord("C"), b"").decode(errors="replace")
        record.error = fields.get(ord("M"), b"").decode(errors="replace")
    return record
