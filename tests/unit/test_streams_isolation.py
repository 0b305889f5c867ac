"""Attacks on the idle-session savings of the streams: the shared empty ``_NO_PLANS``
dict (statement and portal plans) and the ``None`` buffers (``_pending``, ``_carry``).

* Isolation: what one stream is fed must never change what another stream does. Two
  streams sharing one dialect are fed interleaved operations (well-formed extended and
  simple protocol traffic with prepared CLEAN CONNECTION statements, Bind/Execute/Close,
  DEALLOCATE, DISCARD ALL, PREPARE, COPY, split at random points down to single bytes,
  and release()/client_gone() in between); each must return exactly what it returns when
  fed alone, and ``_NO_PLANS`` must stay empty. Both builds.
* The builds agree on the same interleaving.
* Nothing but ProtocolViolation ever escapes, whatever is fed after release() or
  client_gone() (a ``None`` buffer must never be appended to, measured or searched).
"""

from __future__ import annotations

import random
from types import ModuleType
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import proxy.streams as interpreted
from proxy import hotpath
from proxy.clean import CleanConnectionDialect, CleanPlan
from proxy.wire import (
    COPY_DONE,
    FLUSH,
    SYNC,
    ProtocolViolation,
    bind,
    close,
    copy_data,
    copy_fail,
    describe,
    execute,
    parse,
    query,
)

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))

BUILDS = [pytest.param(interpreted, id="interpreted")]
BUILDS.append(
    pytest.param(
        hotpath.compiled,
        id="compiled",
        marks=()
        if hotpath.compiled is not None
        else pytest.mark.skip(reason=f"compiled streams not used: {hotpath.REASON}"),
    )
)

NAMES = [b"", b"s1", b"s2", b"S1"]
CLEAN_TEXTS = [b"clean connection to all", b"CLEAN CONNECTION TO ALL FORCE"]
PLAIN_TEXTS = [b"select 1", b"select 'clean connection to all'", b"copy t from stdin"]
QUERIES = [
    b"select 1",
    b"deallocate s1",
    b"deallocate all",
    b"discard all",
    b"prepare s1 as select 1",
    b"prepare s2 as clean connection to all",
    b"clean connection to all",
    b"select 1; clean connection to all",
]


COPY_FAIL = copy_fail(b"no")


@st.composite
def frontend_messages(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["parse-clean", "parse-plain", "bind", "execute", "close", "describe"] * 3
            + ["sync", "sync", "flush", "query", "copy-data", "copy-done", "copy-fail"]
        )
    )
    name = draw(st.sampled_from(NAMES))
    other = draw(st.sampled_from(NAMES))
    if kind == "parse-clean":
        return parse(name, draw(st.sampled_from(CLEAN_TEXTS)))
    if kind == "parse-plain":
        return parse(name, draw(st.sampled_from(PLAIN_TEXTS)))
    if kind == "bind":
        return bind(name, other)
    if kind == "execute":
        return execute(name)
    if kind == "close":
        return close(draw(st.sampled_from([b"S", b"P"])), name)
    if kind == "describe":
        return describe(draw(st.sampled_from([b"S", b"P"])), name)
    if kind == "sync":
        return SYNC
    if kind == "flush":
        return FLUSH
    if kind == "query":
        return query(draw(st.sampled_from(QUERIES)))
    if kind == "copy-data":
        return copy_data(draw(st.binary(max_size=20)))
    if kind == "copy-done":
        return COPY_DONE
    return COPY_FAIL


# One operation: (stream 0 or 1, what, bytes to feed).
Op = tuple[int, str, bytes]


@st.composite
def operations(draw: st.DrawFn) -> list[Op]:
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 10))):
        who = draw(st.integers(0, 1))
        what = draw(st.sampled_from(["feed"] * 8 + ["release", "client_gone", "probe"]))
        data = b""
        if what == "feed":
            data = b"".join(draw(st.lists(frontend_messages(), min_size=1, max_size=6)))
        ops.append((who, what, data))
    return ops


def _cuts(data: bytes, rng: random.Random) -> list[bytes]:
    pieces = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 1, 2, 3, 4, 5, 6, 9, 40, 400, 10_000])
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def _ready(module: ModuleType):  # type: ignore[no-untyped-def]
    state = module.SessionState()
    state.authenticated = state.ready = True
    state.answering_group = 0
    return state


def _queue(state) -> list[object]:  # type: ignore[no-untyped-def]
    return [
        (plan.group, sorted((i, type(s).__name__) for i, s in plan.slots.items()), plan.spans)
        for plan in state.queue
    ]


def _play(module: ModuleType, ops: list[Op], seed: int, only: int | None) -> list[list[object]]:
    """Run ``ops`` (those of stream ``only``, or all), return each stream's trace."""
    # The program's random audit token, fixed: the traces of two plays are compared.
    with mock.patch("proxy.clean.secrets.token_hex", return_value="0" * 16):
        return _play_fixed(module, ops, seed, only)


def _play_fixed(
    module: ModuleType, ops: list[Op], seed: int, only: int | None
) -> list[list[object]]:
    dialect = CleanConnectionDialect()
    states = [_ready(module), _ready(module)]
    streams = [
        module.FrontendStream(state, max_message_size=1 << 20, dialect=dialect) for state in states
    ]
    rngs = [random.Random(seed), random.Random(seed + 1)]
    traces: list[list[object]] = [[], []]
    dead = [False, False]
    for who, what, data in ops:
        if only is not None and who != only:
            continue
        assert module._NO_PLANS == {}
        if dead[who]:
            continue
        stream, trace = streams[who], traces[who]
        try:
            if what == "feed":
                for piece in _cuts(data, rngs[who]):
                    trace.append([bytes(chunk) for chunk in stream.feed(piece)])
            elif what == "release":
                stream.release()
                trace.append("released")
            elif what == "client_gone":
                trace.append(stream.client_gone())
            else:
                trace.append((stream.at_message_boundary(), stream.awaits_shaped_answer()))
        except ProtocolViolation as exc:
            trace.append(("ProtocolViolation", str(exc)))
            dead[who] = True  # the relay closes the session
        trace.append(_queue(states[who]))
        trace.append(stream.groups_sent)
    assert module._NO_PLANS == {}
    return traces


@pytest.mark.parametrize("module", BUILDS)
def test_a_prepared_clean_statement_does_not_leak_into_another_session(
    module: ModuleType,
) -> None:
    """Session A prepares s1 as CLEAN CONNECTION (rewritten, its executions shaped);
    session B then binds and executes its own s1: B's reply must not be shaped."""
    dialect = CleanConnectionDialect()
    a_state, b_state = _ready(module), _ready(module)
    a = module.FrontendStream(a_state, max_message_size=1 << 20, dialect=dialect)
    b = module.FrontendStream(b_state, max_message_size=1 << 20, dialect=dialect)
    out = a.feed(parse(b"s1", b"clean connection to all") + bind(b"p", b"s1") + execute(b"p"))
    assert out[0] != parse(b"s1", b"clean connection to all")  # rewritten
    assert [list(plan.slots) for plan in a_state.queue] == [[0]]
    assert module._NO_PLANS == {}

    sent = bind(b"p", b"s1") + execute(b"p") + bind(b"", b"s1") + execute(b"") + SYNC
    assert b"".join(bytes(c) for c in b.feed(sent)) == sent
    assert b_state.queue == []
    assert module._NO_PLANS == {}

    a.release()
    c_state = _ready(module)
    c = module.FrontendStream(c_state, max_message_size=1 << 20, dialect=dialect)
    c.feed(bind(b"p", b"s1") + execute(b"p") + SYNC)
    assert c_state.queue == []
    assert module._NO_PLANS == {}


@pytest.mark.parametrize("module", BUILDS)
@SETTINGS
@given(operations(), st.integers(0, 10_000))
@example(
    [
        (0, "feed", parse(b"s1", b"clean connection to all")),
        (1, "feed", bind(b"", b"s1") + execute(b"") + SYNC),
        (0, "feed", bind(b"", b"s1") + execute(b"") + SYNC),
    ],
    0,
)
@example(
    [
        (0, "feed", parse(b"s1", b"clean connection to all")[:3]),
        (0, "release", b""),
        (0, "feed", bind(b"", b"s1")),
        (1, "client_gone", b""),
        (1, "feed", execute(b"")[:2]),
        (1, "release", b""),
        (1, "feed", execute(b"")[2:] + SYNC),
    ],
    0,
)
def test_streams_are_isolated(module: ModuleType, ops: list[Op], seed: int) -> None:
    together = _play(module, ops, seed, None)
    assert together[0] == _play(module, ops, seed, 0)[0]
    assert together[1] == _play(module, ops, seed, 1)[1]


@pytest.mark.skipif(hotpath.compiled is None, reason="compiled streams not used")
@SETTINGS
@given(operations(), st.integers(0, 10_000))
def test_builds_agree_on_interleaved_sessions(ops: list[Op], seed: int) -> None:
    assert _play(hotpath.compiled, ops, seed, None) == _play(interpreted, ops, seed, None)


@pytest.mark.parametrize("module", BUILDS)
@SETTINGS
@given(st.binary(max_size=60), st.binary(max_size=60), st.integers(0, 10_000))
def test_backend_fed_after_release(
    module: ModuleType, before: bytes, after: bytes, seed: int
) -> None:
    """release() drops the carry (None); bytes read afterwards (the server's last words
    while the session is being torn down) raise nothing but ProtocolViolation."""
    rng = random.Random(seed)
    for planned in (False, True):
        state = module.SessionState()
        if planned:
            state.for_group(0).slots[0] = CleanPlan("CLEAN CONNECTION TO ALL").start()
        stream = module.BackendStream(state, lambda shaping, error: None)
        for data in (before, after):
            try:
                for piece in _cuts(data, rng):
                    stream.feed(piece)
            except ProtocolViolation:
                pass
            stream.at_message_boundary()
            stream.release()
