"""The two directions of a ready session, fed bytes without sockets (h11's test_io pattern).

Pass-through traffic must come out byte for byte as it went in, however the reads split it;
rewritten Query/Parse messages are replaced exactly; and the backend shapes exactly the
replies that the frontend's plans point at, across pipelined groups, errors and COPY.
The rewriter here is a fake: a table from query text to :class:`Rewrite`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable

import pytest

from proxy.streams import (
    BackendStream,
    FrontendStream,
    Rewrite,
    SessionState,
    SyntaxFix,
)
from proxy.wire import (
    COPY_DONE,
    FLUSH,
    SYNC,
    TERMINATE,
    ProtocolViolation,
    bind,
    build_fields,
    close,
    command_complete,
    copy_data,
    copy_fail,
    describe,
    execute,
    message,
    parse,
    query,
)
from proxy.wire import ready_for_query as ready
from tests.unit.ran_plan import RanPlan

# Every test runs on the interpreted and the compiled build (tests/unit/conftest.py).


pytestmark = pytest.mark.usefixtures("stream_build")

MAX = 1 << 20


def ReplyPlans() -> SessionState:
    """The state of a session past login: these tests feed the ready phase."""
    state = SessionState()
    state.authenticated = state.ready = True
    return state


class _WholeText:
    """A scanner stand-in for the fake rewriters: the text is judged whole, with the
    dialect's pre-test."""

    def __init__(self, start: int, might) -> None:  # type: ignore[no-untyped-def]
        self.start, self.might, self.found = start, might, False

    def feed(self, buf: bytes | bytearray, limit: int) -> bool:
        self.found = bool(self.might(bytes(buf[self.start : limit])))
        return True


class HookDialect:
    """Adapts a pre-test and a text → Rewrite function to the stream's Dialect."""

    statements = "hooked statements"

    def __init__(self, might, rewrite) -> None:  # type: ignore[no-untyped-def]
        self.might_rewrite = might
        self.might_redefine = might
        self._rewrite = rewrite

    def scanner(self, state: SessionState, start: int, tracking: bool) -> _WholeText:
        return _WholeText(start, self.might_rewrite)

    def rewrite(self, buf, start, end, scan, state, settled):  # type: ignore[no-untyped-def]
        return self._rewrite(bytes(buf[start:end]))

    def outcome(self, session, shaped, error) -> None:  # type: ignore[no-untyped-def]
        pass


# --- message builders ----------------------------------------------------------------


def function_call() -> bytes:
    return message(b"F", struct.pack("!IHHIH", 1598, 0, 1, 0, 0))


def row_description() -> bytes:
    return message(b"T", b"\0\x01" + b"c\0" + b"\0" * 6 + struct.pack("!IhIh", 23, 4, 0, 0))


def data_row(value: bytes) -> bytes:
    return message(b"D", b"\0\x01" + struct.pack("!I", len(value)) + value)


CONTEXT = b"PL/pgSQL function inline_code_block line 3 at RAISE"


def fields(sqlstate: bytes, text: bytes, *, context: bool, position: bytes | None = None):
    out = [(ord("S"), b"ERROR"), (ord("V"), b"ERROR"), (ord("C"), sqlstate), (ord("M"), text)]
    if position is not None:
        out.append((ord("P"), position))
    if context:
        out.append((ord("W"), CONTEXT))
    out.append((ord("F"), b"pl_exec.c"))
    return out


def error(sqlstate: bytes = b"P0001", text: bytes = b"boom", **kw: object) -> bytes:
    kw.setdefault("context", True)
    return message(b"E", build_fields(fields(sqlstate, text, **kw)))  # type: ignore[arg-type]


def notice(text: bytes = b"note", *, context: bool = True) -> bytes:
    return message(b"N", build_fields(fields(b"00000", text, context=context)))


PARSE_COMPLETE = message(b"1", b"")
BIND_COMPLETE = message(b"2", b"")
CLOSE_COMPLETE = message(b"3", b"")
NO_DATA = message(b"n", b"")
EMPTY_QUERY = message(b"I", b"")
PORTAL_SUSPENDED = message(b"s", b"")
PARAMETER_STATUS = message(b"S", b"TimeZone\0UTC\0")
NOTIFICATION = message(b"A", struct.pack("!I", 42) + b"chan\0payload\0")
CLEAN = command_complete(b"CLEAN CONNECTION")

STARTUP_REPLY = (
    message(b"R", struct.pack("!I", 0))
    + PARAMETER_STATUS
    + message(b"K", struct.pack("!II", 1, 2))
    + ready()
)


# --- feeding -------------------------------------------------------------------------


def random_splits(data: bytes, rng: random.Random, largest: int = 40) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, largest)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def split_modes(data: bytes, seed: int = 0) -> dict[str, list[bytes]]:
    """The ways to cut ``data`` into reads; computed lazily, by mode name."""
    return _Splits(data, seed)


class _Splits(dict):
    def __init__(self, data: bytes, seed: int) -> None:
        super().__init__()
        self.data, self.seed = data, seed

    def __missing__(self, mode: str) -> list[bytes]:
        data, rng = self.data, random.Random(self.seed)
        if mode == "whole":
            return [data]
        if mode == "bytewise":
            return [data[i : i + 1] for i in range(len(data))]
        return random_splits(data, rng, 13 if mode == "random-small" else 5000)


def feed(stream: FrontendStream | BackendStream, pieces: Iterable[bytes]) -> bytes:
    out: list[bytes] = []
    for piece in pieces:
        chunks = stream.feed(piece)
        assert all(isinstance(c, bytes | bytearray | memoryview) for c in chunks)
        out.extend(bytes(c) for c in chunks)
    return b"".join(out)


MODES = ["whole", "bytewise", "random-small", "random-large"]


# --- pass-through --------------------------------------------------------------------

FRONTEND_TRAFFIC = b"".join(
    [
        message(b"p", b"secret\0"),
        query(b"select 1"),
        query(b"select 'clean' as not_a_statement"),
        parse(b"", b"select $1::int", (23,)),
        bind(b"", b""),
        describe(b"P", b""),
        execute(b""),
        SYNC,
        parse(b"named", b"select 2"),
        FLUSH,
        describe(b"S", b"named"),
        SYNC,
        query(b"copy t from stdin"),
        copy_data(b"x" * 20_000),
        copy_data(b"1\t2\n"),
        COPY_DONE,
        function_call(),
        close(b"S", b"named"),
        SYNC,
        query(b""),
        TERMINATE,
    ]
)

BACKEND_TRAFFIC = b"".join(
    [
        STARTUP_REPLY,
        row_description(),
        *[data_row(b"%d" % i) for i in range(50)],
        command_complete(b"SELECT 50"),
        notice(),
        PARAMETER_STATUS,
        NOTIFICATION,
        ready(),
        PARSE_COMPLETE,
        BIND_COMPLETE,
        data_row(b"y" * 30_000),
        PORTAL_SUSPENDED,
        error(),
        ready(b"E"),
        message(b"G", b"\0\0\0"),
        message(b"H", b"\0\0\0"),
        copy_data(b"z" * 20_000),
        COPY_DONE,
        command_complete(b"COPY 1"),
        EMPTY_QUERY,
        NO_DATA,
        CLOSE_COMPLETE,
        ready(b"T"),
    ]
)


def never(_: bytes) -> bool:
    return False


def always(_: bytes) -> bool:
    return True


def no_rewrite(_: bytes) -> Rewrite | None:
    return None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "hooks",
    [(None, None), (never, no_rewrite), (always, no_rewrite)],
    ids=["none", "never", "nothing"],
)
def test_frontend_pass_through(mode: str, hooks: tuple) -> None:
    might, rewrite = hooks
    dialect = None if might is None else HookDialect(might, rewrite)
    stream = FrontendStream(ReplyPlans(), max_message_size=MAX, dialect=dialect)
    assert feed(stream, split_modes(FRONTEND_TRAFFIC)[mode]) == FRONTEND_TRAFFIC


@pytest.mark.parametrize("mode", MODES)
def test_backend_pass_through(mode: str) -> None:
    stream = BackendStream(ReplyPlans())
    assert feed(stream, split_modes(BACKEND_TRAFFIC)[mode]) == BACKEND_TRAFFIC
    assert stream.at_message_boundary()


@pytest.mark.parametrize("mode", MODES)
def test_backend_records_the_backend_pid(mode: str) -> None:
    """BackendKeyData names the server process: the peer registry's key."""
    state = SessionState()
    stream = BackendStream(state)
    assert feed(stream, split_modes(STARTUP_REPLY)[mode]) == STARTUP_REPLY
    assert state.backend_pid == 1 and state.ready


@pytest.mark.parametrize("seed", range(30))
def test_prefixes_come_out_as_prefixes(seed: int) -> None:
    """With trailing bytes (an incomplete message at the end), what was sent so far is a
    prefix of the input, never anything else; the rest arrives when the message does."""
    rng = random.Random(seed)
    for traffic, make in (
        (FRONTEND_TRAFFIC, lambda: FrontendStream(ReplyPlans(), max_message_size=MAX)),
        (BACKEND_TRAFFIC, lambda: BackendStream(ReplyPlans())),
    ):
        cut = rng.randrange(1, len(traffic))
        stream = make()
        head = feed(stream, random_splits(traffic[:cut], rng, 3000))
        assert traffic.startswith(head)
        assert len(head) <= cut
        assert head + feed(stream, [traffic[cut:]]) == traffic


def test_backend_boundary_tracking() -> None:
    stream = BackendStream(ReplyPlans())
    stream.feed(STARTUP_REPLY + data_row(b"abc")[:7])
    assert not stream.at_message_boundary()
    stream.feed(data_row(b"abc")[7:])
    assert stream.at_message_boundary()
    stream.feed(ready()[:3])  # a partial header is held back
    assert not stream.at_message_boundary()


# --- bad lengths ---------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 3])
def test_frontend_length_below_four(length: int) -> None:
    stream = FrontendStream(ReplyPlans(), max_message_size=MAX)
    with pytest.raises(ProtocolViolation):
        stream.feed(query(b"select 1") + b"Q" + struct.pack("!I", length))


@pytest.mark.parametrize("kind", [b"Q", b"d", b"P", b"X"])
def test_frontend_length_above_max(kind: bytes) -> None:
    stream = FrontendStream(ReplyPlans(), max_message_size=1000)
    stream.feed(query(b"x" * 990))  # exactly at the limit: fine
    with pytest.raises(ProtocolViolation):
        # Only the header has arrived: the length alone condemns it.
        stream.feed(kind + struct.pack("!I", 1001))


@pytest.mark.parametrize("length", [0, 3])
def test_backend_length_below_four(length: int) -> None:
    for plans in (ReplyPlans(), _planned()):
        stream = BackendStream(plans)
        with pytest.raises(ProtocolViolation):
            stream.feed(STARTUP_REPLY + b"D" + struct.pack("!I", length) + b"\0" * 8)


def _planned() -> SessionState:
    plans = ReplyPlans()
    plans.for_group(0).slots[0] = RanPlan("CLEAN CONNECTION TO ALL").start()
    return plans


# --- rewriting Query / Parse ---------------------------------------------------------


class FakeRewriter:
    """Rewrites the texts it has an entry for; records every call."""

    def __init__(self, table: dict[bytes, Rewrite]) -> None:
        self.table = table
        self.calls: list[bytes] = []
        self.pretests: list[bytes] = []

    def might_rewrite(self, body: bytes) -> bool:
        self.pretests.append(body)
        return b"clean" in body.lower()

    def might_redefine(self, body: bytes) -> bool:
        return False

    def scanner(self, state: SessionState, start: int, tracking: bool) -> _WholeText:
        return _WholeText(start, lambda body: b"clean" in body.lower())

    def rewrite(self, buf, start, end, scan, state, settled) -> Rewrite | None:  # type: ignore[no-untyped-def]
        sql = bytes(buf[start:end])
        self.calls.append(sql)
        return self.table.get(sql)

    def outcome(self, session, shaped, error) -> None:  # type: ignore[no-untyped-def]
        pass

    def frontend(self, plans: SessionState, max_size: int = MAX) -> FrontendStream:
        return FrontendStream(plans, max_message_size=max_size, dialect=self)


DO = b"DO $$begin perform 1; end$$"


def rw(sql: bytes, *renamed: int, fix: SyntaxFix | None = None) -> Rewrite:
    """A Rewrite whose statements ``renamed`` (indexes) become CLEAN CONNECTION."""
    return Rewrite(sql, tuple((i, RanPlan(f"statement {i}")) for i in renamed), fix)


def slots(plans: SessionState) -> list[tuple[int, set[int]]]:
    return [(p.group, set(p.slots)) for p in plans.queue]


@pytest.mark.parametrize("mode", MODES)
def test_query_rewrite_replaces_exactly(mode: str) -> None:
    original = b"select 1; CLEAN CONNECTION TO ALL; select 'clean'"
    rewritten = b"select 1; " + DO + b"; select 'clean'"
    fake = FakeRewriter({original: rw(rewritten, 1)})
    before = [query(b"select 1"), parse(b"", b"select 2"), bind(b"", b""), execute(b""), SYNC]
    after = [copy_data(b"clean" * 10), query(b"select 'no clean here'"), TERMINATE]
    traffic = b"".join([*before, query(original), *after])
    expected = b"".join([*before, query(rewritten), *after])
    plans = ReplyPlans()
    assert feed(fake.frontend(plans), split_modes(traffic, 7)[mode]) == expected
    assert fake.calls == [original, b"select 'no clean here'"]
    assert slots(plans) == [(2, {1})]


@pytest.mark.parametrize("mode", MODES)
def test_parse_rewrite_keeps_name_and_parameter_types(mode: str) -> None:
    original = b"CLEAN CONNECTION TO ALL FOR DATABASE d"
    fake = FakeRewriter({original: rw(DO, 0)})
    traffic = parse(b"stmt", original, (25, 23)) + bind(b"", b"stmt") + execute(b"") + SYNC
    expected = parse(b"stmt", DO, (25, 23)) + bind(b"", b"stmt") + execute(b"") + SYNC
    plans = ReplyPlans()
    assert feed(fake.frontend(plans), split_modes(traffic, 3)[mode]) == expected
    assert slots(plans) == [(0, {0})]


def test_rewrite_that_keeps_the_text_forwards_original_bytes() -> None:
    text = b"select 1; CLEAN CONNECTION TO ALL bad"
    fix = SyntaxFix(b"11", b'syntax error at or near "bad"', b"35")
    fake = FakeRewriter({text: rw(text, fix=fix)})
    plans = ReplyPlans()
    assert feed(fake.frontend(plans), [query(text)]) == query(text)
    assert plans.queue[0].syntax_fix == fix


def test_query_at_max_size_is_rewritten_and_over_it_refused() -> None:
    text = b"CLEAN " + b" " * 100
    fake = FakeRewriter({text: rw(DO, 0)})
    size = len(query(text)) - 1
    assert feed(fake.frontend(ReplyPlans(), size), [query(text)]) == query(DO)
    with pytest.raises(ProtocolViolation):
        fake.frontend(ReplyPlans(), size - 1).feed(query(text)[:5])


# --- shaping replies: a pipelined session ----------------------------------------------

Q1 = b"select 1; CLEAN CONNECTION TO ALL; select 2"
Q2 = b"do $$begin end$$; CLEAN CONNECTION TO NODE (a)"
Q3 = b"copy t from stdin; CLEAN CONNECTION TO ALL FORCE"
Q4 = b"CLEAN CONNECTION TO ALL FOR d"
Q5 = b";; ;CLEAN CONNECTION TO ALL TO u;"
Q6 = b"select 1; CLEAN CONNECTION TO bad"
Q7 = b"select 1;\nCLEAN CONNECTION TO worse"
P1 = b"CLEAN CONNECTION TO ALL CHECK"
P2 = b"CLEAN CONNECTION TO ALL junk"
FIX6 = SyntaxFix(b"11", b'syntax error at or near "bad"', b"28")
FIX7 = SyntaxFix(b"11", b'syntax error at or near "worse"', b"29")
FIXP2 = SyntaxFix(b"1", b'syntax error at or near "junk"', b"25")

REWRITES = {
    Q1: rw(Q1.replace(b"CLEAN CONNECTION TO ALL", DO), 1),
    Q2: rw(Q2.replace(b"CLEAN CONNECTION TO NODE (a)", DO), 1),
    Q3: rw(Q3.replace(b"CLEAN CONNECTION TO ALL FORCE", DO), 1),
    Q4: rw(DO, 0),
    Q5: rw(b";; ;" + DO + b";", 0),
    Q6: rw(Q6, fix=FIX6),
    Q7: rw(Q7, fix=FIX7),
    P1: rw(DO, 0),
    P2: rw(P2, fix=FIXP2),
}


def syntax_error(position: bytes, text: bytes = b'syntax error at or near "CLEAN"') -> bytes:
    return error(b"42601", text, context=False, position=position)


def fixed_syntax_error(fix: SyntaxFix) -> bytes:
    kept = [
        (code, fix.message if code == ord("M") else value)
        for code, value in fields(b"42601", b"", context=False, position=None)
    ]
    return message(b"E", build_fields([*kept, (ord("P"), fix.position)]))


# Each group: (client messages, [(server message, what the client must receive)]).
# ``same`` marks a message that must pass unchanged.
same = None
GROUPS: list[tuple[list[bytes], list[tuple[bytes, bytes | None]]]] = [
    # 0: plain query, no plan
    (
        [query(b"select 1")],
        [
            (row_description(), same),
            (data_row(b"1"), same),
            (command_complete(b"SELECT 1"), same),
            (notice(), same),
            (ready(), same),
        ],
    ),
    # 1: rewritten middle statement; notices before its completion lose CONTEXT, after keep it
    (
        [query(Q1)],
        [
            (row_description(), same),
            (data_row(b"1"), same),
            (command_complete(b"SELECT 1"), same),
            (notice(), notice(context=False)),
            (PARAMETER_STATUS, same),
            (NOTIFICATION, same),
            (notice(context=False), same),
            (command_complete(b"DO"), CLEAN),
            (row_description(), same),
            (data_row(b"2"), same),
            (notice(), same),
            (command_complete(b"SELECT 1"), same),
            (ready(), same),
        ],
    ),
    # 2: the client's own DO keeps its tag; the rewritten one's error loses CONTEXT, ends group
    (
        [query(Q2)],
        [
            (command_complete(b"DO"), same),
            (notice(), notice(context=False)),
            (error(), error(context=False)),
            (ready(b"I"), same),
        ],
    ),
    # 3: extended, unnamed, no plan; a DO here keeps its tag
    (
        [parse(b"", b"do $$begin end$$"), bind(b"", b""), describe(b"P", b""), execute(b""), SYNC],
        [
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (NO_DATA, same),
            (notice(), same),
            (command_complete(b"DO"), same),
            (ready(), same),
        ],
    ),
    # 4: named statement rewritten at Parse; shaped at its Execute
    (
        [parse(b"s1", P1), bind(b"", b"s1"), describe(b"P", b""), execute(b""), SYNC],
        [
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (NO_DATA, same),
            (notice(), notice(context=False)),
            (command_complete(b"DO"), CLEAN),
            (ready(), same),
        ],
    ),
    # 5: two executes in one group, only the second is the tracked statement
    (
        [
            parse(b"", b"select 2"),
            bind(b"p2", b""),
            execute(b"p2"),
            bind(b"p1", b"s1"),
            execute(b"p1"),
            SYNC,
        ],
        [
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (data_row(b"2"), same),
            (notice(), same),
            (command_complete(b"SELECT 1"), same),
            (BIND_COMPLETE, same),
            (notice(), notice(context=False)),
            (command_complete(b"DO"), CLEAN),
            (ready(), same),
        ],
    ),
    # 6: extended COPY: libpq's Sync after Execute is void while in COPY IN mode
    (
        [
            parse(b"", b"copy t from stdin"),
            bind(b"", b""),
            execute(b""),
            SYNC,
            copy_data(b"1\n"),
            copy_data(b"2\n"),
            COPY_DONE,
            SYNC,
        ],
        [
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (message(b"G", b"\0\0\0"), same),
            (command_complete(b"COPY 2"), same),
            (ready(), same),
        ],
    ),
    # 7: the tracked statement right after the COPY: counting must not have drifted
    (
        [bind(b"", b"s1"), execute(b""), SYNC],
        [(BIND_COMPLETE, same), (command_complete(b"DO"), CLEAN), (ready(), same)],
    ),
    # 8: simple-query COPY followed by a rewritten statement in the same string
    (
        [query(Q3), copy_data(b"1\n"), COPY_DONE],
        [
            (message(b"G", b"\0\0\0"), same),
            (command_complete(b"COPY 1"), same),
            (notice(), notice(context=False)),
            (command_complete(b"DO"), CLEAN),
            (ready(), same),
        ],
    ),
    # 9: FunctionCall opens a group with no completion
    (
        [function_call()],
        [(message(b"V", b"\0\0\0\x01x"), same), (ready(), same)],
    ),
    # 10: a rewritten statement alone that fails
    (
        [query(Q4)],
        [(error(), error(context=False)), (ready(), same)],
    ),
    # 11: empty statements produce nothing and are not counted
    (
        [query(Q5)],
        [(command_complete(b"DO"), CLEAN), (ready(), same)],
    ),
    # 12: empty query string
    (
        [query(b"")],
        [(EMPTY_QUERY, same), (ready(), same)],
    ),
    # 13: syntax fix at the planned position
    (
        [query(Q6)],
        [(syntax_error(b"11"), fixed_syntax_error(FIX6)), (ready(), same)],
    ),
    # 14: a 42601 at another position is the server's own: untouched
    (
        [query(Q7)],
        [(syntax_error(b"3", b'syntax error at or near "1"'), same), (ready(), same)],
    ),
    # 15: syntax fix for an unnamed Parse; the server skips to Sync
    (
        [parse(b"", P2), bind(b"", b""), execute(b""), SYNC],
        [(syntax_error(b"1"), fixed_syntax_error(FIXP2)), (ready(), same)],
    ),
    # 16: Close of the tracked statement, then its name reused for something else
    (
        [close(b"S", b"s1"), parse(b"s1", b"select 3"), bind(b"", b"s1"), execute(b""), SYNC],
        [
            (CLOSE_COMPLETE, same),
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (command_complete(b"DO"), same),
            (ready(), same),
        ],
    ),
    # 17: a portal executed in pieces: each PortalSuspended is a completion slot
    (
        [parse(b"s2", P1), bind(b"cur", b"s2"), execute(b"cur", 1), execute(b"cur", 1), SYNC],
        [
            (PARSE_COMPLETE, same),
            (BIND_COMPLETE, same),
            (PORTAL_SUSPENDED, same),
            (notice(), notice(context=False)),
            (command_complete(b"DO"), CLEAN),
            (ready(), same),
        ],
    ),
]


def client_bytes(groups: list) -> bytes:
    return b"".join(b"".join(messages) for messages, _ in groups)


def server_bytes(groups: list) -> tuple[bytes, bytes]:
    sent = b"".join(s for _, replies in groups for s, _ in replies)
    expected = b"".join(e if e is not None else s for _, replies in groups for s, e in replies)
    return sent, expected


def expected_client_bytes(groups: list) -> bytes:
    out = client_bytes(groups)
    for text, rewrite in REWRITES.items():
        if rewrite.sql != text:
            out = out.replace(query(text), query(rewrite.sql))
            out = out.replace(parse(b"s1", text), parse(b"s1", rewrite.sql))
            out = out.replace(parse(b"s2", text), parse(b"s2", rewrite.sql))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_pipelined_session_all_sent_first(mode: str) -> None:
    """The client pipelines everything before the server answers anything."""
    fake = FakeRewriter(REWRITES)
    plans = ReplyPlans()
    frontend, backend = fake.frontend(plans), BackendStream(plans)
    sent, expected = server_bytes(GROUPS)
    assert feed(frontend, split_modes(client_bytes(GROUPS), 1)[mode]) == expected_client_bytes(
        GROUPS
    )
    assert feed(backend, split_modes(STARTUP_REPLY + sent, 2)[mode]) == STARTUP_REPLY + expected
    assert not plans.queue
    assert frontend.groups_sent == backend.answering_group == len(GROUPS)


@pytest.mark.parametrize("seed", range(10))
def test_session_group_by_group_random_splits(seed: int) -> None:
    """Each group's replies arrive before the next group is sent (psql's rhythm)."""
    rng = random.Random(seed)
    fake = FakeRewriter(REWRITES)
    plans = ReplyPlans()
    frontend, backend = fake.frontend(plans), BackendStream(plans)
    assert feed(backend, random_splits(STARTUP_REPLY, rng)) == STARTUP_REPLY
    for index, group in enumerate(GROUPS):
        sent, expected = server_bytes([group])
        feed(frontend, random_splits(client_bytes([group]), rng))
        assert feed(backend, random_splits(sent, rng, 60)) == expected, f"group {index}"
    assert not plans.queue


@pytest.mark.parametrize("seed", range(10))
def test_session_interleaved_random_splits(seed: int) -> None:
    """The client runs ahead by a random number of groups, then the server catches up."""
    rng = random.Random(seed)
    fake = FakeRewriter(REWRITES)
    plans = ReplyPlans()
    frontend, backend = fake.frontend(plans), BackendStream(plans)
    feed(backend, [STARTUP_REPLY])
    sent_upto = 0
    for index in range(len(GROUPS)):
        while sent_upto <= index or (sent_upto < len(GROUPS) and rng.random() < 0.5):
            feed(frontend, random_splits(client_bytes([GROUPS[sent_upto]]), rng))
            sent_upto += 1
        sent, expected = server_bytes([GROUPS[index]])
        assert feed(backend, random_splits(sent, rng, 60)) == expected, f"group {index}"
    assert not plans.queue


def test_copy_fail_voids_sync_too() -> None:
    """CopyFail ends COPY IN like CopyDone: the Sync sent before it opened no group."""
    plans = ReplyPlans()
    frontend = FakeRewriter(REWRITES).frontend(plans)
    frontend.feed(parse(b"", b"copy t from stdin") + bind(b"", b"") + execute(b"") + SYNC)
    assert frontend.groups_sent == 1
    frontend.feed(copy_data(b"x") + copy_fail(b"nope"))
    assert frontend.groups_sent == 0
    frontend.feed(SYNC)
    assert frontend.groups_sent == 1


def parameter_status(name: bytes, value: bytes) -> bytes:
    return message(b"S", name + b"\0" + value + b"\0")


@pytest.mark.parametrize("mode", ["whole", "bytewise", "random-small"])
@pytest.mark.parametrize("shaping", [False, True])
def test_backend_tracks_client_encoding_from_parameter_status(mode: str, shaping: bool) -> None:
    """The rewriter decodes texts in the session's client_encoding, which the server
    reports in ParameterStatus at startup and after every SET; the bytes pass unchanged."""
    traffic = (
        parameter_status(b"client_encoding", b"UTF8")
        + parameter_status(b"TimeZone", b"UTC")
        + ready()
        + parameter_status(b"client_encoding", b"SJIS")
        + command_complete(b"SET")
        + ready()
    )
    plans = ReplyPlans()
    if shaping:
        plans.for_group(5)  # an outstanding plan switches the backend to its shaping walk
    stream = BackendStream(plans)
    assert feed(stream, split_modes(traffic)[mode]) == traffic
    assert stream.client_encoding == "SJIS"


def auth_sasl(*mechanisms: bytes) -> bytes:
    return message(b"R", struct.pack("!I", 10) + b"".join(m + b"\0" for m in mechanisms) + b"\0")


@pytest.mark.parametrize("mode", ["whole", "bytewise", "random-small"])
def test_scram_plus_withdrawn_when_both_sides_are_tls(mode: str) -> None:
    offered = auth_sasl(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256")
    later = ready() + auth_sasl(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256")  # after startup: kept
    stream = BackendStream(ReplyPlans())
    stream.strip_scram_plus = True
    out = feed(stream, split_modes(offered + later)[mode])
    assert out == auth_sasl(b"SCRAM-SHA-256") + later
    assert not stream.strip_scram_plus


def test_sasl_without_plus_passes_unchanged() -> None:
    traffic = auth_sasl(b"SCRAM-SHA-256") + message(b"R", struct.pack("!I", 0)) + ready()
    stream = BackendStream(ReplyPlans())
    stream.strip_scram_plus = True
    assert feed(stream, [traffic]) == traffic
