"""The two directions of a session, framed by header, without I/O.

:class:`FrontendStream` (client → server) and :class:`BackendStream` (server → client) take
the bytes one socket delivered and return the chunks to write to the other socket. They are
fed whole buffers, byte by byte or anything in between and must produce the same bytes.
What the two directions share (authentication, readiness, encoding, string syntax, groups,
reply plans) lives in one :class:`SessionState`; the backend writes what the server
reports, the frontend what the client sent.

Before the session is ready (the server's first ReadyForQuery) the frontend only frames and
forwards: nothing is inspected or held, and while the server asks for authentication only
password/SASL/GSS messages of PostgreSQL's size pass.

Hot-path rules: per message only the 5-byte header is read; a message that is not a Query or
Parse is forwarded as the original bytes, streamed through without buffering when it spans
reads (COPY data of any size passes with bounded memory). A Query/Parse that arrives in one
read is shown to the :class:`Dialect` only when its cheap byte pre-test fires; one that spans
reads is held and scanned as its bytes arrive (the dialect's incremental scanner), so the
work per read stays proportional to the read.

Reply attribution ("what does the next server message belong to", PgBouncer's forward/skip
/fake queue reduced to what rewriting needs): every Query, Sync and FunctionCall the client
sends opens a *response group* that the server closes with exactly one ReadyForQuery; inside
a group every statement of a Query and every Execute ends with exactly one *completion*
(CommandComplete, EmptyQueryResponse or PortalSuspended) unless an ErrorResponse ends the
group. The frontend counts groups and executes; when a rewritten statement is sent it files a
:class:`ReplyPlan` (group, completion slots); the backend counts ReadyForQuery and
completions and shapes only the messages of planned slots. With no plan outstanding the
backend walks headers and forwards whole reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

try:
    import cython  # at compile time Cython's own; when interpreted, its pure-Python shadow
except ModuleNotFoundError:  # interpreted, and Cython is not installed
    # Bound through globals(): a plain assignment would redeclare the name for Cython.
    globals()["cython"] = SimpleNamespace(compiled=False)


from .wire import (
    FLUSH,
    SYNC,
    TERMINATE,
    AttributionLost,
    ProtocolViolation,
    build_fields,
    command_complete,
    cstring_at,
    message,
    parse_fields,
    query_header,
)

PG_MAX_AUTH_TOKEN_LENGTH = 65535
"""The largest message PostgreSQL accepts while authenticating (password, SASL, GSS)."""

_unpack_int32 = struct.Struct("!I").unpack_from

_QUERY_IN_BATCH = "simple Query or FunctionCall inside an unsynced extended-protocol sequence"
"""PostgreSQL answers such a message within that sequence's response group, or skips it
when an earlier message of the sequence failed; the client's bytes do not say which."""

_NO_COPY_CANDIDATE = -(1 << 40)
"""``FrontendStream._syncs_since_execute`` after a CopyDone/CopyFail: no Execute or Query
since that could have begun a COPY IN (Syncs still count up from it)."""

# Frontend message types (client → server) that need more than a header; the hot loop in
# FrontendStream.feed spells the others (Sync, FunctionCall, CopyDone/Fail) as literals.
_QUERY = 0x51  # Q
_PARSE = 0x50  # P
_BIND = 0x42  # B
_EXECUTE = 0x45  # E

# Backend message types (server → client).
_COMMAND_COMPLETE = 0x43  # C
_EMPTY_QUERY = 0x49  # I
_PORTAL_SUSPENDED = 0x73  # s
_READY_FOR_QUERY = 0x5A  # Z
_ERROR = 0x45  # E
_NOTICE = 0x4E  # N
_PARAMETER_STATUS = 0x53  # S
_AUTHENTICATION = 0x52  # R
_BACKEND_KEY_DATA = 0x4B  # K
_COPY_IN_RESPONSE = 0x47  # G
_AUTH_SASL = 10
_SCRAM_PLUS = b"SCRAM-SHA-256-PLUS"


# Per-type class of backend messages, looked up by type byte: one index, one truth test for
# the common DataRow. 1 = completion, 2 = ReadyForQuery, 3 = ParameterStatus,
# 4 = Authentication, 5 = BackendKeyData (both only ever seen during startup),
# 6 = CopyInResponse, 7 = ErrorResponse (which may end a COPY IN), 8 = the end of the
# answer to a Parse, Bind, Close or Describe.
_BACKEND_KIND = bytearray(256)
for _t in (_COMMAND_COMPLETE, _EMPTY_QUERY, _PORTAL_SUSPENDED):
    _BACKEND_KIND[_t] = 1
_BACKEND_KIND[_READY_FOR_QUERY] = 2
_BACKEND_KIND[_PARAMETER_STATUS] = 3
_BACKEND_KIND[_AUTHENTICATION] = 4
_BACKEND_KIND[_BACKEND_KEY_DATA] = 5
_BACKEND_KIND[_COPY_IN_RESPONSE] = 6
_BACKEND_KIND[_ERROR] = 7
for _t in (0x31, 0x32, 0x33, 0x54, 0x6E):  # Parse/Bind/CloseComplete, RowDescription, NoData
    _BACKEND_KIND[_t] = 8
_BACKEND_KIND = bytes(_BACKEND_KIND)

_FIELD_CODE = ord("C")
_FIELD_MESSAGE = ord("M")
_FIELD_POSITION = ord("P")


@dataclass(frozen=True, slots=True)
class SyntaxFix:
    """Replace the server's syntax error at ``server_position`` with the grammar's own.

    A query string holding an invalid dialect statement is sent unchanged, so the server
    rejects the whole string (as it would a native syntax error) at its first token, and
    keeps the transaction state right; the proxy only rewrites the message text.
    """

    server_position: bytes
    message: bytes
    position: bytes


Fields = list[tuple[int, bytes]]
"""The fields of an ErrorResponse or NoticeResponse, in order: (field code, value)."""


class ReplyShaping(Protocol):
    """One execution of a rewritten statement: how its replies reach the client.

    Built by the dialect's :class:`StatementPlan` for each execution. The stream calls it
    for the execution's own CommandComplete, NoticeResponse and ErrorResponse only; it
    knows nothing of what the replies say.
    """

    def completed(self, tag: bytes) -> bytes:
        """The command tag to send in place of the server's ``tag`` (both without NUL)."""
        ...

    def notice(self, fields: Fields) -> Fields | None:
        """The notice to send in place of ``fields``; None sends none."""
        ...

    def failed(self, fields: Fields) -> Fields:
        """The error to send in place of ``fields``."""
        ...


class StatementPlan(Protocol):
    """What the dialect planned for one rewritten statement (as PgDog's RewritePlan):
    immutable, kept while a prepared statement or portal holds it."""

    def start(self) -> ReplyShaping:
        """A fresh :class:`ReplyShaping` for one execution, which starts now."""
        ...


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What the rewriter made of one Query/Parse text.

    ``sql`` replaces the text (None: forward the original bytes); ``planned`` maps the
    indexes, among the non-empty statements of the text, of the rewritten statements to
    the :class:`StatementPlan` that shapes their replies. ``spans`` lists, in order, each replaced
    piece as (start in the original text, its length, the replacement's length), in
    characters: error positions the server reports in the rewritten text are mapped back
    into the client's text with them. ``redefines`` names the prepared statements the text
    deallocates or redefines by SQL (None: all of them; :data:`DISCARD_ALL`: all of them
    and every portal).
    """

    sql: bytes | None
    planned: tuple[tuple[int, StatementPlan], ...] = ()
    syntax_fix: SyntaxFix | None = None
    spans: tuple[tuple[int, int, int], ...] = ()
    redefines: tuple[bytes | None, ...] = ()


DISCARD_ALL = b"\0"
"""In :attr:`Rewrite.redefines`: every prepared statement and every portal is gone
(``DISCARD ALL``). ``DEALLOCATE ALL`` (None) leaves the portals of a transaction block
open. No statement name can hold a NUL."""


OutcomeListener = Callable[[ReplyShaping, "Fields | None"], None]
"""Told the outcome of each shaped execution: None once it completed, the ErrorResponse
fields the client was sent when it failed, or :data:`ATTRIBUTION_LOST`."""

ATTRIBUTION_LOST: Fields = [
    (ord("C"), b"08P01"),
    (ord("M"), b"outcome unknown: the server's replies could no longer be attributed"),
]
"""The outcome of an execution that was sent to the server and whose replies could no
longer be told from others' (see :class:`AttributionLost`): it may have run."""

SESSION_ENDED: Fields = [
    (ord("C"), b"08006"),
    (ord("M"), b"outcome unknown: the server connection closed before it answered"),
]
"""The outcome of an execution the server was sent but never answered before its
connection closed (the client's session ended on a protocol violation, the server went
away): it may have run."""

UNKNOWN_OUTCOMES = (ATTRIBUTION_LOST, SESSION_ENDED)


@dataclass(slots=True)
class ReplyPlan:
    """The shaping owed to one response group."""

    group: int
    slots: dict[int, ReplyShaping] = field(default_factory=dict)  # completion index → shaping
    syntax_fix: SyntaxFix | None = None
    spans: tuple[tuple[int, int, int], ...] = ()


# The statement and portal plans of a stream that has none: never written to (pop and
# clear of an empty dict are no-ops), so every idle session shares it.
_NO_PLANS: dict = {}


class SessionState:
    """Protocol state of one session that both streams and the rewriter see.

    The backend stream is the only writer of what the server reports (authentication,
    readiness, ParameterStatus values, groups answered); the frontend stream is the only
    writer of what the client sent (groups sent). ``queue`` holds the outstanding
    :class:`ReplyPlan` objects, ordered by group: a plain list, as plans are rare and
    short-lived and an empty deque costs ~700 bytes per idle session.
    """

    __slots__ = (
        "answering_group",
        "attribution_lost",
        "auth_request",
        "authenticated",
        "backend_pid",
        "batch_replies",
        "client_encoding",
        "copy_guesses",
        "failed_group",
        "groups_sent",
        "last_query_group",
        "queue",
        "ready",
        "standard_conforming_strings",
    )

    def __init__(self) -> None:
        self.queue: list[ReplyPlan] = []
        self.authenticated = False  # the server's AuthenticationOk has passed
        self.ready = False  # its first ReadyForQuery has passed: the session is logged in
        self.auth_request = 0  # the last authentication request code the server sent
        self.backend_pid = 0  # from BackendKeyData: the server process serving the session
        self.client_encoding = "UTF8"
        self.standard_conforming_strings = True
        # Response groups (see the module docstring): opened by the client, closed by the
        # server's ReadyForQuery. The first ReadyForQuery ends the startup phase and moves
        # answering_group from -1 to 0.
        self.groups_sent = 0
        self.answering_group = -1
        # COPY IN (see FrontendStream._on_copy_end and BackendStream._copy_*): the group of
        # the last Query sent, the Syncs the frontend took for ignored by a COPY, as
        # (group, index of the COPY's Execute or -1 for a Query), until the server's
        # answer confirms them; and whether replies can no longer be attributed.
        self.last_query_group = -1
        self.copy_guesses: list[tuple[int, int]] | None = None
        self.attribution_lost = False
        # Written by the backend: the group an ErrorResponse last ended, and how many
        # extended-protocol messages of the group being answered were answered
        # (ParseComplete, BindComplete, CloseComplete, a Describe's RowDescription or
        # NoData, a completion).
        self.failed_group = -1
        self.batch_replies = 0

    def for_group(self, group: int) -> ReplyPlan:
        if self.queue and self.queue[-1].group == group:
            return self.queue[-1]
        plan = ReplyPlan(group)
        self.queue.append(plan)
        return plan

    def shift(self, from_group: int, by: int) -> None:
        for plan in self.queue:
            if plan.group >= from_group:
                plan.group -= by


class Dialect(Protocol):
    """The statements a session rewrites: what the frontend stream calls, and when.

    ``might_rewrite`` is the cheap pre-test on a whole Query/Parse body that arrived in
    one read; a dialect whose pre-test is "this lowercase ASCII word occurs, in any case"
    may say so in an attribute ``rewrite_word`` (bytes), which a stream may then test
    itself (:func:`contains_word`) instead of calling ``might_rewrite``; ``scanner`` starts an incremental scan of a text beginning at ``start`` of
    the buffers later given to its ``feed(buf, limit) -> bool`` (True once the text's NUL
    was reached); ``rewrite`` gets the text ``buf[start:end]`` (``end`` at its NUL) with
    the finished scan and returns the :class:`Rewrite`, or None to forward it unchanged.
    ``tracking`` says that rewritten named statements exist, whose SQL-level redefinition
    (DEALLOCATE, PREPARE, DISCARD ALL) must be reported; ``settled`` that no message sent
    before this one can still change the session's encoding or string syntax.
    """

    statements: str
    """What the rewritten statements are called in the errors a session ends with."""

    def might_rewrite(self, body: bytes) -> bool: ...

    def might_redefine(self, body: bytes) -> bool:
        """Pre-test while rewritten named statements exist: could ``body`` redefine one?"""

    def scanner(self, state: SessionState, start: int, tracking: bool) -> Scanner: ...

    def rewrite(
        self,
        buf: bytes,
        start: int,
        end: int,
        scan: Scanner,
        state: SessionState,
        settled: bool,
    ) -> Rewrite | None: ...

    def outcome(self, session: Any, execution: ReplyShaping, error: Fields | None) -> None:
        """Told the outcome of each shaped execution (``error``: the ErrorResponse fields
        the client was sent)."""


class Scanner(Protocol):
    """An incremental scan of one text; ``found`` once done: the rewriter has work."""

    found: bool

    def feed(self, buf: bytes | bytearray, limit: int) -> bool: ...


class FrontendStream:
    """Client → server framing from the first message after the StartupMessage.

    Until the server's AuthenticationOk has passed, the client may only answer
    authentication requests: password/SASL/GSS messages (``p``) up to PostgreSQL's
    65,535 bytes, streamed through; anything else once the server has asked for
    authentication is refused as PostgreSQL refuses it. Nothing is inspected or held for
    rewriting before the session is ready (its first ReadyForQuery).
    """

    __slots__ = (
        "_after_query_copy",
        "_dialect",
        "_executes",
        "_executes_before_sync",
        "_max",
        "_might_redefine",
        "_might_rewrite",
        "_pending",
        "_pending_need",
        "_portals",
        "_rewrite_word",
        "_scan",
        "_scan_start",
        "_state",
        "_statements",
        "_stream_left",
        "_syncs_since_execute",
        "_tracking",
        "_unsynced",
    )

    def __init__(
        self,
        state: SessionState,
        *,
        max_message_size: int,
        dialect: Dialect | None = None,
    ) -> None:
        self._state = state
        self._max = max_message_size
        self._dialect = dialect
        self._might_rewrite = dialect.might_rewrite if dialect is not None else None
        self._might_redefine = dialect.might_redefine if dialect is not None else None
        self._rewrite_word: bytes | None = getattr(dialect, "rewrite_word", None)
        # A partial header, or a Query/Parse/tracked message not yet whole, and how many
        # bytes it must reach before parsing is worth retrying (appending is amortised O(1):
        # a 100 MB query in 256 kB reads must not be re-copied on every read). None when
        # nothing is held: an idle session keeps no buffer.
        self._pending: bytearray | None = None
        self._pending_need = 0
        # The scan of the pending Query/Parse text, advanced as its bytes arrive, and the
        # offset of that text in the message (0: not known yet).
        self._scan: Scanner | None = None
        self._scan_start = 0
        self._stream_left = 0  # bytes of a streamed message still to pass through
        # Response-group accounting (see module docstring).
        self._executes = 0
        self._syncs_since_execute = 0
        self._executes_before_sync = 0
        self._after_query_copy = (
            False  # the last COPY candidate was a Query (its string may hold more)
        )
        # Extended-protocol messages sent since the last Sync (Parse, Bind, Describe,
        # Close; Execute is counted apart): a Query or FunctionCall then joins their group.
        self._unsynced = 0
        # Prepared statements / portals whose executions are shaped, and whether any exist.
        # Both start as the shared empty _NO_PLANS (an idle session holds no dict of its
        # own); the two places that insert give the stream its own dict first.
        self._statements: dict[bytes, StatementPlan] = _NO_PLANS
        self._portals: dict[bytes, StatementPlan] = _NO_PLANS
        self._tracking = False

    @property
    def groups_sent(self) -> int:
        return self._state.groups_sent

    def at_message_boundary(self) -> bool:
        """True when the server has been sent whole messages only (none is half-streamed)."""
        return not self._stream_left

    def awaits_shaped_answer(self) -> bool:
        """True while a shaped execution that was sent is unanswered: in a group a Query or
        Sync closed, or by an Execute not yet followed by a Sync (the server runs an
        Execute when it reads it)."""
        state = self._state
        return any(plan.slots and plan.group <= state.groups_sent for plan in state.queue)

    def client_gone(self) -> bytes | None:
        """The client left. If the server was sent whole messages only: the messages to
        send in its place so that the server answers everything it was sent, then ends
        the session and closes (a Sync and a Terminate: the Sync ends an extended-protocol
        group, and the error state in which the server skips every message until a Sync;
        after an unsynced batch a Flush and a Terminate); else None. Held bytes the server
        never saw are dropped."""
        if self._stream_left:
            return None
        self._pending = None
        self._scan = None
        if self._unsynced or self._executes:
            # A batch the client never synced: a Flush has the server send what it
            # answered, and the Terminate ends the session as the client's leaving would
            # (its implicit transaction rolled back, not committed by an invented Sync).
            return FLUSH + TERMINATE
        self._state.groups_sent += 1
        self._executes = 0
        self._syncs_since_execute += 1
        return SYNC + TERMINATE

    def release(self) -> None:
        """Drop buffered bytes: the session is over."""
        self._pending = None
        self._scan = None
        self._statements.clear()
        self._portals.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """The chunks to send to the server for ``data`` received from the client."""
        state = self._state
        if not state.ready:
            return self._feed_login(data)
        if state.attribution_lost and self._dialect is not None:
            self._lose_attribution("the server's answer to a COPY left its replies unattributable")
        out: list[bytes] = []
        left = self._stream_left
        if left:
            if len(data) <= left:
                self._stream_left = left - len(data)
                return [data]
            out.append(data[:left])
            data = data[left:]
            self._stream_left = 0
        if self._pending:
            self._pending += data
            if len(self._pending) < self._pending_need:
                self._advance_scan()
                return out
            data = bytes(self._pending)
            self._pending = None
        n = len(data)
        pos = run_start = 0
        max_size = self._max
        tracking = self._tracking
        might = self._might_rewrite
        scan = self._scan  # set when the first message is a Query/Parse scanned while pending
        unpack = _unpack_int32
        compiled = cython.compiled
        word = self._rewrite_word
        # Hot loop: type bytes are literals (LOAD_CONST) rather than module globals.
        while n - pos >= 5:
            t = data[pos]
            if compiled:  # four byte reads in C; struct's one call when interpreted
                length = data[pos + 1]  # a C Py_ssize_t: widened before the shift
                length = (
                    (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
                )
            else:
                length = unpack(data, pos + 1)[0]
            if length < 4 or length > max_size:
                raise ProtocolViolation(f"invalid message length {length}")
            end = pos + 1 + length
            # Query, Parse; Bind, Execute, Close only while rewritten statements exist.
            if t == 0x51 or t == 0x50 or (tracking and (t == 0x42 or t == 0x45 or t == 0x43)):
                if end > n:
                    break
                if t == 0x51:  # Query: opens a response group
                    if (self._unsynced or self._executes) and not self._runs_next(self._unsynced):
                        self._lose_attribution(_QUERY_IN_BATCH)
                        might = None
                        scan = None
                    self._unsynced = 0
                    state.last_query_group = state.groups_sent
                    state.groups_sent += 1
                    self._executes = 0
                    self._syncs_since_execute = 0
                elif t != 0x45:  # Parse, Bind, Close (Execute is counted)
                    self._unsynced += 1
                # The pre-test inline: a Query/Parse without the word costs one call
                # (compiled, with the dialect's word: a byte loop, no call, no copy).
                if (
                    (t != 0x51 and t != 0x50)
                    or scan is not None
                    or (
                        might is not None
                        and (
                            (
                                contains_word(data, pos + 5, end, word)
                                if compiled and word is not None
                                else might(data[pos + 5 : end])
                            )
                            or (tracking and self._might_redefine(data[pos + 5 : end]))
                        )
                    )
                ):
                    replacement = self._inspect(t, data, pos, end)
                    scan = None
                elif t == 0x50 and tracking:  # a redefined name is no longer rewritten
                    replacement = self._forget_parsed(data, pos)
                else:
                    replacement = None
                tracking = self._tracking
                if replacement is not None:
                    if pos > run_start:
                        out.append(data[run_start:pos])
                    out.extend(replacement)
                    run_start = end
            else:
                if t == 0x53:  # Sync
                    if self._syncs_since_execute == 0:
                        self._executes_before_sync = self._executes
                    self._syncs_since_execute += 1
                    state.groups_sent += 1
                    self._executes = 0
                    self._unsynced = 0
                elif t == 0x45:  # Execute
                    self._executes += 1
                    self._syncs_since_execute = 0
                elif t == 0x42 or t == 0x44 or t == 0x43:  # Bind, Describe, Close
                    self._unsynced += 1
                elif t == 0x58 and self._executes and self.awaits_shaped_answer():
                    # Terminate right after a rewritten statement's Execute, no Sync: the
                    # server would exit without sending its answer, and the audit record
                    # with it. A Flush first has it sent (nothing is committed).
                    if pos > run_start:
                        out.append(data[run_start:pos])
                    out.append(FLUSH)
                    run_start = pos
                elif t == 0x46:  # FunctionCall
                    if (self._unsynced or self._executes) and not self._runs_next(self._unsynced):
                        self._lose_attribution(_QUERY_IN_BATCH)
                        might = None
                        scan = None
                    self._unsynced = 0
                    state.groups_sent += 1
                elif t == 0x63 or t == 0x66:  # CopyDone, CopyFail
                    self._on_copy_end()
                    if self._dialect is None:  # it gave attribution up
                        might = None
                        scan = None
                if end > n:
                    self._stream_left = end - n
                    pos = n
                    break
            pos = end
        if pos > run_start:
            out.append(data[run_start:pos])
        if pos < n:
            self._pending = bytearray(data[pos:])
            if n - pos >= 5:
                self._pending_need = end - pos
                self._start_scan(data[pos])
            else:
                self._pending_need = 5
        return out

    # --- before the session is ready ---------------------------------------------------

    def _feed_login(self, data: bytes) -> list[bytes]:
        """Frame and forward, inspecting nothing (the session is not logged in yet)."""
        state = self._state
        left = self._stream_left
        if left >= len(data):
            self._stream_left = left - len(data)
            return [data]
        self._stream_left = 0
        if self._pending:
            self._pending += data
            data = bytes(self._pending)
            self._pending = None
        n = len(data)
        pos = left
        while n - pos >= 5:
            t = data[pos]
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length}")
            if not state.authenticated:
                if t == 0x70:  # PasswordMessage / SASL / GSS response
                    if length > PG_MAX_AUTH_TOKEN_LENGTH:
                        raise ProtocolViolation("invalid message length")
                elif state.auth_request:
                    raise ProtocolViolation(_expected_auth_response(state.auth_request, t))
            if length > self._max:
                raise ProtocolViolation(f"invalid message length {length}")
            if t == 0x51 or t == 0x53 or t == 0x46:  # Query, Sync, FunctionCall
                state.groups_sent += 1
            pos += 1 + length
        if pos > n:
            self._stream_left = pos - n
        elif pos < n:
            self._pending = bytearray(data[pos:])
            self._pending_need = 5
            return [data[:pos]] if pos else []
        return [data]

    # --- accounting ------------------------------------------------------------------

    def _on_copy_end(self) -> None:
        """A CopyDone or CopyFail. The server ignores Sync (and Flush) in COPY IN, and libpq
        sends one right after an Execute it did not know was a COPY: when this message
        ends a COPY IN begun by the last Execute or Query, the Syncs sent since opened no
        group. That is a guess until the server answers (a CopyDone or CopyFail outside
        COPY is ignored, and a COPY that fails stops reading anywhere): it is filed in
        ``copy_guesses`` for the backend to confirm, which gives up attribution if not.
        """
        void = self._syncs_since_execute
        self._syncs_since_execute = _NO_COPY_CANDIDATE
        if void <= 0:
            if void == 0:
                self._after_query_copy = self._executes == 0
            elif void > _NO_COPY_CANDIDATE and self._after_query_copy:
                # Syncs since an earlier CopyDone, no Execute or Query since: void only if
                # a later statement of the same Query string began another COPY.
                self._lose_attribution("Sync between two COPYs of one query string")
            return
        state = self._state
        executes = self._executes_before_sync
        self._after_query_copy = executes == 0
        group = state.groups_sent - void  # the group of the COPY's Execute
        if not executes:
            group -= 1  # none before the Syncs: the COPY, if any, was the Query before them
        if group < state.answering_group:
            return  # answered already, so no COPY of it reads this: the Syncs were answered
        state.groups_sent -= void
        state.shift(state.groups_sent + void, void)
        self._executes = executes
        if state.copy_guesses is None:
            state.copy_guesses = []
        state.copy_guesses.append((group, executes - 1))

    # --- scanning a Query / Parse text that spans reads ---------------------------------

    def _start_scan(self, t: int) -> None:
        """The pending message is a Query/Parse: scan its text as its bytes arrive."""
        self._scan = None
        self._scan_start = 0
        if (t == 0x51 or t == 0x50) and self._dialect is not None:
            self._scan_start = 5 if t == 0x51 else -1
            self._advance_scan()

    def _advance_scan(self) -> None:
        if self._scan_start == 0:
            return
        pending = self._pending
        if self._scan is None:
            if self._scan_start < 0:  # Parse: the text starts after the statement name
                nul = pending.find(b"\0", 5)
                if nul < 0:
                    return
                self._scan_start = nul + 1
            assert self._dialect is not None
            self._scan = self._dialect.scanner(self._state, self._scan_start, self._tracking)
        self._scan.feed(pending, len(pending))

    # --- inspection of whole Query / Parse / Bind / Execute / Close -------------------

    def _inspect(self, t: int, data: bytes, pos: int, end: int) -> list[bytes] | None:
        if t == _QUERY:  # the loop has counted its group already
            return self._inspect_query(data, pos, end, self._state.groups_sent - 1)
        if t == _PARSE:
            return self._inspect_parse(data, pos, end)
        body = data[pos + 5 : end]  # strings are looked for within the message only
        if t == _BIND:
            portal, at = cstring_at(body, 0)
            statement, _ = cstring_at(body, at)
            planned = self._statements.get(statement)
            if planned is not None:
                if self._portals is _NO_PLANS:
                    self._portals = {}
                self._portals[portal] = planned
            else:
                self._portals.pop(portal, None)
        elif t == _EXECUTE:
            portal, _ = cstring_at(body, 0)
            planned = self._portals.get(portal)
            if planned is not None:
                group = self._state.for_group(self._state.groups_sent)
                group.slots[self._executes] = planned.start()
            self._executes += 1
            self._syncs_since_execute = 0
        else:  # Close
            if not body:
                raise ProtocolViolation("invalid message format")
            name, _ = cstring_at(body, 1)
            if body[:1] != b"S":
                self._portals.pop(name, None)  # a failure before it ends the portal anyway
            elif name in self._statements and not self._runs_next(self._unsynced - 1):
                pass  # the server may skip it (an earlier message failed): still rewritten
            else:
                self._statements.pop(name, None)
        self._tracking = bool(self._statements or self._portals)
        return None

    def _rewrite(self, data: bytes, pos: int, start: int, text_end: int) -> Rewrite | None:
        """Finish the scan of the text ``data[start:text_end]`` and ask for its rewrite.

        ``pos`` is the message's offset in ``data``; a scan begun while the message was
        pending has offsets relative to the message start.
        """
        dialect = self._dialect
        assert dialect is not None
        scan = self._scan
        self._scan = None
        self._scan_start = 0
        if scan is None or pos != 0:
            scan = dialect.scanner(self._state, start, self._tracking)
        scan.feed(data, text_end + 1)
        if not scan.found:
            return None
        state = self._state
        # Settled: no earlier message can still change client_encoding or
        # standard_conforming_strings before the server reads this one.
        settled = state.answering_group >= state.groups_sent - (data[pos] == _QUERY) and not (
            data[pos] == _PARSE and self._executes
        )
        return dialect.rewrite(data, start, text_end, scan, state, settled)

    def _inspect_query(self, data: bytes, pos: int, end: int, group: int) -> list[bytes] | None:
        """A Query whose pre-test fired: rewrite it and file the plan for its group."""
        text_end = end - 1
        if data[text_end] != 0 or data.find(b"\0", pos + 5, text_end) >= 0:
            self._scan = None
            self._scan_start = 0
            return None  # not one NUL-terminated string: the server rejects it whole
        rewrite = self._rewrite(data, pos, pos + 5, text_end)
        if rewrite is None:
            return None
        self._forget_redefined(rewrite)
        if not rewrite.planned and rewrite.syntax_fix is None:
            return None
        plan = self._state.for_group(group)
        for index, planned in rewrite.planned:
            plan.slots[index] = planned.start()
        plan.syntax_fix = rewrite.syntax_fix
        plan.spans = rewrite.spans
        if rewrite.sql is None or not rewrite.planned:
            return None  # only a SyntaxFix: the text goes unchanged
        # Written as pieces (writelines): a rewritten 100 MB query is not copied again.
        return [query_header(len(rewrite.sql)), rewrite.sql, b"\0"]

    def _inspect_parse(self, data: bytes, pos: int, end: int) -> list[bytes] | None:
        """A Parse whose pre-test fired: rewrite it and remember the statement's name."""
        name, text_start = cstring_at(data, pos + 5, end)
        text_end = cstring_at(data, text_start, end)[1] - 1
        rewrite = self._rewrite(data, pos, text_start, text_end)
        self._parsed_again(name)
        if rewrite is None:
            return None
        self._forget_redefined(rewrite)
        if not rewrite.planned:
            if rewrite.syntax_fix is not None:
                self._state.for_group(self._state.groups_sent).syntax_fix = rewrite.syntax_fix
            return None
        if self._statements is _NO_PLANS:
            self._statements = {}
        self._statements[name] = rewrite.planned[0][1]
        self._tracking = True
        assert rewrite.sql is not None
        return [message(b"P", name + b"\0" + rewrite.sql + b"\0" + data[text_end + 1 : end])]

    def _runs_next(self, before: int) -> bool:
        """True when the server is sure to run the next message: it follows a Sync (or
        a Query) directly, or ``before`` extended-protocol messages that were all
        answered without an error (asyncpg's Parse/Describe/Flush before the Query of its
        COPY: the Query runs, and its ReadyForQuery closes the group). Not after an
        Execute: a Query's completions would follow the Execute's."""
        if self._executes:
            return False
        if not before:
            return True
        state = self._state
        return (
            state.answering_group == state.groups_sent
            and state.failed_group != state.answering_group
            and state.batch_replies == before
        )

    def _lose_attribution(self, reason: str) -> None:
        """From here on replies cannot be attributed to groups with certainty (``reason``:
        see :data:`_QUERY_IN_BATCH`, :meth:`_on_copy_end`, :class:`BackendStream`).
        Certain or nothing: this session gets no more rewriting (a dialect statement is then
        the server's syntax error); with rewritten statements prepared or replies still to
        shape, whose executions could no longer be shaped or audited, it ends (no client
        library sends these sequences)."""
        state = self._state
        state.attribution_lost = True
        state.copy_guesses = None
        if self._tracking or state.queue:
            called = self._dialect.statements  # tracking and plans exist only with a dialect
            raise ProtocolViolation(f"{reason} while {called} are prepared or being answered")
        self._dialect = None
        self._might_rewrite = None
        self._might_redefine = None
        self._rewrite_word = None
        self._scan = None
        self._scan_start = 0

    def _forget_redefined(self, rewrite: Rewrite) -> None:
        """SQL-level DEALLOCATE / PREPARE / DISCARD ALL in the text end the tracking of
        the statement names they touch (all of them for ``None``)."""
        if not rewrite.redefines:
            return
        for name in rewrite.redefines:
            if name is None or name == DISCARD_ALL:
                self._statements.clear()
                if name == DISCARD_ALL:
                    self._portals.clear()
                continue
            self._statements.pop(name, None)
        self._tracking = bool(self._statements or self._portals)

    def _forget_parsed(self, data: bytes, pos: int) -> None:
        """A Parse the pre-test let through: its name no longer holds a rewritten text."""
        end = pos + 1 + _unpack_int32(data, pos + 1)[0]
        self._parsed_again(cstring_at(data, pos + 5, end)[0])

    def _parsed_again(self, name: bytes) -> None:
        """A Parse of ``name``. The unnamed statement is taken as replaced (the server
        skips the Parse only after a failure, and clients send a Parse with every Bind
        of the unnamed statement; keeping the old plan would let the new statement's
        replies be read as the rewritten statement's). A named one that holds a rewritten
        text is refused by the server (42P05) if it still exists, and taken if its Parse
        failed or it was closed: the bytes do not say which, so attribution is given up (no
        client library parses a name again)."""
        if name and name in self._statements:
            self._lose_attribution("Parse of a statement name that holds a rewritten text")
        self._forget_statement(name)

    def _forget_statement(self, name: bytes) -> None:
        """``name`` is no longer a rewritten statement."""
        self._statements.pop(name, None)
        self._tracking = bool(self._statements or self._portals)


def contains_word(data: bytes, start: int, end: int, word: bytes) -> bool:
    """``word`` (lowercase ASCII letters) occurs in ``data[start:end]`` in any letter case:
    ``data[start:end].lower().find(word) >= 0`` without copying. A byte loop: fast only in
    the compiled build, which is the only one that calls it on the hot path."""
    size = len(word)
    if size == 0:
        return True
    first = word[0]
    i = start
    last = end - size
    while i <= last:
        if (data[i] | 0x20) == first:
            j = 1
            while j < size and (data[i + j] | 0x20) == word[j]:
                j += 1
            if j == size:
                return True
        i += 1
    return False


def _expected_auth_response(request: int, t: int) -> str:
    """PostgreSQL's message for a non-authentication message during authentication."""
    kind = {7: "GSS", 8: "GSS", 9: "GSS", 10: "SASL", 11: "SASL"}.get(request, "password")
    return f"expected {kind} response, got message type {t}"


class BackendStream:
    """Server → client: walks headers, counts groups, shapes planned replies."""

    __slots__ = (
        "_carry",
        "_carry_need",
        "_completions",
        "_copy_at",
        "_copy_group",
        "_on_outcome",
        "_skip",
        "_state",
        "strip_scram_plus",
    )

    def __init__(self, state: SessionState, on_outcome: OutcomeListener | None = None) -> None:
        self._state = state
        self._on_outcome = on_outcome
        self._completions = 0
        # The COPY IN under way: the group it is in (-1: none) and the completions that
        # group had when it began (the index of its Execute).
        self._copy_group = -1
        self._copy_at = 0
        self._skip = 0  # bytes of the current message body still to pass through
        # A partial header, or a message held whole for shaping, and the length it must
        # reach: accumulated in place, so a 100 MB message held back costs linear time.
        # None when nothing is held.
        self._carry: bytearray | None = None
        self._carry_need = 0
        # Set when both sides are TLS: remove SCRAM-SHA-256-PLUS from AuthenticationSASL.
        self.strip_scram_plus = False

    @property
    def answering_group(self) -> int:
        return self._state.answering_group

    @property
    def client_encoding(self) -> str:
        return self._state.client_encoding

    def at_message_boundary(self) -> bool:
        """True when the bytes forwarded so far end exactly at a message boundary."""
        return not self._skip and not self._carry

    def release(self) -> None:
        """Drop buffered bytes: the session is over."""
        self._carry = None

    def feed(self, data: bytes) -> list[bytes]:
        """The chunks to send to the client for ``data`` received from the server."""
        pos = self._skip
        if pos:
            if len(data) <= pos:
                self._skip = pos - len(data)
                return [data]
            self._skip = 0
        if self._carry:
            self._carry += data
            if len(self._carry) < self._carry_need:
                return []
            data = bytes(self._carry)
            self._carry = None
        state = self._state
        if state.queue or self.strip_scram_plus:
            return self._walk_shaping(data, pos)
        # Nothing to shape: count groups and forward ``data`` as it is (the hot path).
        n = len(data)
        kinds = _BACKEND_KIND
        unpack = _unpack_int32
        completions = self._completions
        replies = state.batch_replies
        compiled = cython.compiled
        while n - pos >= 5:
            if compiled:
                length = data[pos + 1]  # a C Py_ssize_t: widened before the shift
                length = (
                    (length << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
                )
            else:
                length = unpack(data, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"server sent invalid message length {length}")
            kind = kinds[data[pos]]
            if kind:
                if kind == 8:
                    replies += 1
                elif kind == 1:
                    completions += 1
                    if self._copy_group >= 0:
                        self._copy_ended(True)
                elif kind == 2:
                    if self._copy_group >= 0 or state.copy_guesses:
                        self._copy_check_ready()
                    state.answering_group += 1
                    state.ready = True
                    completions = 0
                    replies = 0
                elif kind >= 6:
                    if kind == 6:
                        self._copy_started(completions)
                    else:
                        state.failed_group = state.answering_group
                        if self._copy_group >= 0:
                            self._copy_ended(False)
                elif pos + 1 + length <= n:  # ParameterStatus, Authentication: whole
                    self._session_message(kind, data, pos + 5, pos + 1 + length)
                else:
                    break  # hold it back until it is whole
            pos += 1 + length
        self._completions = completions
        state.batch_replies = replies
        if pos > n:
            self._skip = pos - n
        elif pos < n:
            # A partial header (or ParameterStatus): hold it back so the next read starts
            # on a boundary.
            self._hold(data, pos, n)
            return [data[:pos]] if pos else []
        return [data]

    # --- COPY IN: confirming the frontend's guesses -------------------------------------

    def _copy_started(self, completions: int, first: int = 0) -> None:
        """A CopyInResponse: the server reads CopyData until a CopyDone or CopyFail (or an
        error), and ignores the Syncs it reads meanwhile."""
        if self._copy_group >= 0:
            self._lose("CopyInResponse during COPY IN", first)
            return
        self._copy_group = self._state.answering_group
        self._copy_at = completions

    def _copy_ended(self, completed: bool, first: int = 0, current_told: bool = False) -> None:
        """The COPY IN under way ended: with its CommandComplete (``completed``: the server
        read everything up to the first CopyDone sent after the COPY began, so the Syncs
        between opened no group, as the frontend guessed when it saw that CopyDone), or
        with an ErrorResponse (it stopped reading anywhere: certain only if the client
        sent no Sync, Query or FunctionCall after the COPY's own message)."""
        state = self._state
        group = self._copy_group
        self._copy_group = -1
        guesses = state.copy_guesses
        if guesses and guesses[0][0] == group:
            guessed_at = guesses[0][1]
            if completed and (guessed_at < 0 or guessed_at == self._copy_at):
                guesses.pop(0)
                return
            self._lose("COPY IN that ended otherwise than guessed", first, current_told)
            return
        if completed:
            return  # no guess: no Sync was sent between the COPY's message and its CopyDone
        if guesses or not (
            state.groups_sent == group
            or (state.groups_sent == group + 1 and state.last_query_group == group)
        ):
            self._lose("COPY IN that failed after more messages were sent", first, current_told)

    def _copy_check_ready(self, first: int = 0) -> None:
        """A ReadyForQuery ends the group being answered: a COPY IN still under way, or a
        guess that a COPY of this group (or an earlier one) ignored Syncs and that no COPY
        confirmed, means the groups are not what the frontend counted."""
        state = self._state
        guesses = state.copy_guesses
        if self._copy_group >= 0:
            self._lose("ReadyForQuery during COPY IN", first)
        elif guesses and guesses[0][0] <= state.answering_group:
            self._lose("CopyDone or CopyFail outside COPY IN after a Sync", first)

    def _lose(self, reason: str, first: int, current_told: bool = False) -> None:
        """Replies can no longer be attributed to groups. The frontend rewrites nothing
        more (it reads ``attribution_lost``). Executions still planned are told their
        outcome is unknown (their statements were sent, and may run) and the session
        ends (:class:`AttributionLost`); ``first`` restores what the client was sent of
        the message this read continues, so that no reply lands inside it;
        ``current_told``: the execution at the current completion was told its outcome
        (the ErrorResponse just shaped)."""
        state = self._state
        state.attribution_lost = True
        state.copy_guesses = None
        self._copy_group = -1
        if not state.queue:
            return
        self._report_unknown(ATTRIBUTION_LOST, current_told)
        state.queue.clear()
        self._skip = first
        self._carry = None
        raise AttributionLost(reason)

    def abandon(self) -> None:
        """Nothing more will be read from the server (its connection is closed): the
        executions still planned that the server was sent are told their outcome is
        unknown (:data:`SESSION_ENDED`); they may have run."""
        state = self._state
        if not state.queue:
            return
        self._report_unknown(SESSION_ENDED, False)
        state.queue.clear()

    def _report_unknown(self, outcome: Fields, current_told: bool) -> None:
        state = self._state
        told = self._completions + current_told
        for plan in state.queue:
            if plan.group > state.groups_sent:
                continue  # never sent: the server cannot run it
            if plan.group == state.answering_group and state.failed_group == plan.group:
                continue  # the group failed: the server skips the rest of it
            for index, shaping in plan.slots.items():
                done = plan.group < state.answering_group or (
                    plan.group == state.answering_group and index < told
                )
                if not done and self._on_outcome is not None:
                    self._on_outcome(shaping, outcome)

    def _hold(self, data: bytes, pos: int, n: int) -> None:
        self._carry = bytearray(data[pos:])
        self._carry_need = 1 + _unpack_int32(data, pos + 1)[0] if n - pos >= 5 else 5

    def _session_message(self, kind: int, data: bytes, start: int, end: int) -> None:
        """A whole ParameterStatus (kind 3), Authentication (4) or BackendKeyData (5)."""
        state = self._state
        if kind == 5:
            if end - start >= 4:
                state.backend_pid = _unpack_int32(data, start)[0]
            return
        if kind == 4:
            if end - start >= 4:
                state.auth_request = _unpack_int32(data, start)[0]
                if state.auth_request == 0:
                    state.authenticated = True
            return
        try:
            name, value, _ = data[start:end].split(b"\0", 2)
        except ValueError:
            raise ProtocolViolation("server sent a malformed ParameterStatus") from None
        if name == b"client_encoding":
            state.client_encoding = value.decode("ascii", "replace").upper()
        elif name == b"standard_conforming_strings":
            state.standard_conforming_strings = value == b"on"

    def _walk_shaping(self, data: bytes, pos: int) -> list[bytes]:
        first = pos  # where this read starts in the message the client was last sent
        out: list[bytes] = []
        n = len(data)
        run_start = 0
        state = self._state
        queue = state.queue
        while n - pos >= 5:
            t = data[pos]
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"server sent invalid message length {length}")
            end = pos + 1 + length
            if t == _AUTHENTICATION and self.strip_scram_plus:
                if end > n:
                    break
                shaped = _without_scram_plus(data[pos + 5 : end])
                if shaped is not None:
                    if pos > run_start:
                        out.append(data[run_start:pos])
                    out.append(shaped)
                    run_start = end
            plan = queue[0] if queue and queue[0].group == state.answering_group else None
            if plan is not None and (t == _COMMAND_COMPLETE or t == _ERROR or t == _NOTICE):
                if end > n:
                    break  # hold the partial message until it is whole
                shaped = self._shape(plan, t, data[pos + 5 : end])
                if shaped is not None:
                    if pos > run_start:
                        out.append(data[run_start:pos])
                    out.append(shaped)
                    run_start = end
            kind = _BACKEND_KIND[t]
            if kind == 8:
                state.batch_replies += 1
            elif kind == 1:
                self._completions += 1
                if self._copy_group >= 0:
                    self._copy_ended(True, first)
            elif kind >= 6:
                if kind == 6:
                    self._copy_started(self._completions, first)
                else:
                    state.failed_group = state.answering_group
                    if self._copy_group >= 0:  # its error, shaped above if it was planned
                        self._copy_ended(False, first, current_told=True)
            elif kind >= 3:
                if end > n:
                    break
                self._session_message(kind, data, pos + 5, end)
            elif kind == 2:
                if self._copy_group >= 0 or state.copy_guesses:
                    self._copy_check_ready(first)
                state.answering_group += 1
                state.ready = True
                self._completions = 0
                state.batch_replies = 0
                self.strip_scram_plus = False  # authentication is over
                while queue and queue[0].group < state.answering_group:
                    queue.pop(0)
            if end > n:
                self._skip = end - n
                pos = n
                break
            pos = end
        if pos > run_start:
            out.append(data[run_start:pos])
        if pos < n:
            self._hold(data, pos, n)
        return out

    def _shape(self, plan: ReplyPlan, t: int, body: bytes) -> bytes | None:
        """The replacement for a whole C/E/N message of ``plan``'s group, or None to keep it."""
        shaping = plan.slots.get(self._completions)
        if t == _COMMAND_COMPLETE:
            if shaping is None:
                return None
            tag = shaping.completed(body[:-1])
            del plan.slots[self._completions]  # told once: never again as unknown
            if self._on_outcome is not None:
                self._on_outcome(shaping, None)
            return command_complete(tag)
        try:
            fields = parse_fields(body)
        except ValueError:
            raise ProtocolViolation("server sent a malformed error or notice") from None
        if t == _ERROR and plan.syntax_fix is not None:
            fixed = _apply_syntax_fix(plan.syntax_fix, fields)
            if fixed is not None:
                return fixed
        # Positions the server counted in the rewritten text, mapped back to the client's.
        mapped = _map_position(plan.spans, fields) if plan.spans else None
        if mapped is not None:
            fields = mapped
        if shaping is None:
            return None if mapped is None else message(bytes((t,)), build_fields(fields))
        if t == _NOTICE:
            shaped = shaping.notice(fields)
            if shaped is None:
                return b""
        else:
            shaped = shaping.failed(fields)
            del plan.slots[self._completions]
            if self._on_outcome is not None:
                self._on_outcome(shaping, shaped)
        if shaped == fields and mapped is None:
            return None
        return message(bytes((t,)), build_fields(shaped))


def _map_position(
    spans: tuple[tuple[int, int, int], ...], fields: list[tuple[int, bytes]]
) -> list[tuple[int, bytes]] | None:
    """``fields`` with the position field mapped from the rewritten text to the client's
    (see :attr:`Rewrite.spans`); None when there is nothing to change."""
    at = next((i for i, (code, _) in enumerate(fields) if code == _FIELD_POSITION), None)
    if at is None or not fields[at][1].isdigit():
        return None
    index = int(fields[at][1]) - 1  # 0-based character index in the rewritten text
    mapped = index
    delta = 0  # replacement length minus original length, over the spans passed so far
    for start, original_length, new_length in spans:
        if index < start + delta:
            break
        if index < start + delta + new_length:
            mapped = start  # inside a replacement: point at its statement
            break
        delta += new_length - original_length
        mapped = index - delta
    if mapped == index:
        return None
    return [*fields[:at], (_FIELD_POSITION, str(mapped + 1).encode()), *fields[at + 1 :]]


def _without_scram_plus(body: bytes) -> bytes | None:
    """An AuthenticationSASL message without SCRAM-SHA-256-PLUS, or None to keep ``body``."""
    if len(body) < 4 or _unpack_int32(body, 0)[0] != _AUTH_SASL:
        return None
    mechanisms = [m for m in body[4:].split(b"\0") if m]
    if _SCRAM_PLUS not in mechanisms:
        return None
    kept = [m for m in mechanisms if m != _SCRAM_PLUS]
    return message(b"R", body[:4] + b"".join(m + b"\0" for m in kept) + b"\0")


def _apply_syntax_fix(fix: SyntaxFix, fields: list[tuple[int, bytes]]) -> bytes | None:
    found = dict(fields)
    if found.get(_FIELD_CODE) != b"42601" or found.get(_FIELD_POSITION) != fix.server_position:
        return None
    fixed = [
        (code, fix.message if code == _FIELD_MESSAGE else value)
        for code, value in fields
        if code != _FIELD_POSITION
    ]
    fixed.append((_FIELD_POSITION, fix.position))
    return message(b"E", build_fields(fixed))
