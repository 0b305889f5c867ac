"""The compiled and the interpreted build of the session streams agree on every input.

The same (random, mutated) message sequence, split at the same random points, is fed to
one stream of each build: the chunks returned by every feed, the exception raised (its
type and text: the text becomes the client's FATAL message), the shaping callbacks and the
state the streams leave behind must be the same. Lengths in the header's upper half
(2^31 .. 2^32-1) are drawn on purpose: the compiled build reads the header with C integers.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import proxy.streams as interpreted
from proxy import hotpath
from proxy.clean import CleanConnectionDialect, CleanPlan

compiled = hotpath.compiled
pytestmark = pytest.mark.skipif(
    compiled is None, reason=f"compiled streams not used: {hotpath.REASON}"
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

FRONTEND_TYPES = b"QPBEDCSHFdcfXp" + bytes([0, 0x80, 0xFF, ord("Z")])
BACKEND_TYPES = b"RSKZTDCIsENAtn123cdGHWV" + bytes([0, 0x80, 0xFF])
SNIPPETS = [
    b"clean connection to all for d",
    b"CLEAN CONNECTION TO ALL FORCE",
    b"explain clean connection to all",
    b"select 1",
    b"'",
    b'"',
    b"$$",
    b"/*",
    b"--",
    b";",
    b"\0",
    b"\\",
    b"\xff\xfe",
    b"deallocate s",
    b"prepare s as select 1",
    b"discard all",
    b"client_encoding\0SJIS\0",
    b"standard_conforming_strings\0off\0",
    b"\x00\x00\x00\x00",
    b"\x00\x00\x00\x0a",
    b"\xff\xff\xff\xff",
    b"\x80\x00\x00\x00",
]
# Lengths where a 32-bit (signed or unsigned) reading of the header goes wrong.
EDGE_LENGTHS = [
    0,
    3,
    4,
    5,
    (1 << 16) - 1,
    1 << 16,
    (1 << 30) - 1,
    1 << 30,
    (1 << 31) - 1,
    1 << 31,
    (1 << 31) + 1,
    (1 << 32) - 5,
    (1 << 32) - 1,
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.one_of(st.sampled_from(SNIPPETS), st.binary(max_size=12)), max_size=8))
    return b"".join(parts)


@st.composite
def messages(draw: st.DrawFn, types: bytes) -> bytes:
    kind = draw(st.sampled_from(list(types)))
    body = draw(bodies())
    length = len(body) + 4
    how = draw(st.sampled_from(["ok"] * 8 + ["short", "long", "edge", "any"]))
    if how == "short":
        length = max(0, length - draw(st.integers(1, 6)))
    elif how == "long":
        length += draw(st.integers(1, 6))
    elif how == "edge":
        length = draw(st.sampled_from(EDGE_LENGTHS))
    elif how == "any":
        length = draw(st.integers(0, (1 << 32) - 1))
    return bytes([kind]) + struct.pack("!I", length) + body


def _splits(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    cuts = []
    pos = 0
    while pos < n:
        step = rng.choice([1, 2, 3, 5, 7, 40, 200])
        cuts.append((pos, pos + step))
        pos += step
    return cuts


def _frontend_state(module, phase: str):  # type: ignore[no-untyped-def]
    state = module.SessionState()
    if phase == "auth-requested":
        state.auth_request = 10
    elif phase == "authenticated":
        state.authenticated = True
    elif phase == "ready":
        state.authenticated = state.ready = True
        state.answering_group = 0
    return state


def _state_of(state) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "authenticated": state.authenticated,
        "ready": state.ready,
        "auth_request": state.auth_request,
        "backend_pid": state.backend_pid,
        "client_encoding": state.client_encoding,
        "standard_conforming_strings": state.standard_conforming_strings,
        "groups_sent": state.groups_sent,
        "answering_group": state.answering_group,
        "queue": [
            (plan.group, sorted(plan.slots), plan.syntax_fix, plan.spans) for plan in state.queue
        ],
    }


def _run(feed, data: bytes, cuts: list[tuple[int, int]]) -> list[object]:  # type: ignore[no-untyped-def]
    """What each feed returned, up to the first exception (type and text)."""
    trace: list[object] = []
    for start, end in cuts:
        try:
            chunks = feed(data[start:end])
        except Exception as exc:  # the exception is what is compared
            trace.append((type(exc).__name__, str(exc)))
            break
        trace.append([bytes(chunk) for chunk in chunks])
    return trace


def _frontend(module, phase: str, max_size: int, data: bytes, cuts):  # type: ignore[no-untyped-def]
    state = _frontend_state(module, phase)
    stream = module.FrontendStream(
        state, max_message_size=max_size, dialect=CleanConnectionDialect()
    )
    trace = _run(stream.feed, data, cuts)
    return trace, _state_of(state), stream.groups_sent


def _backend(module, planned: bool, strip: bool, data: bytes, cuts):  # type: ignore[no-untyped-def]
    state = module.SessionState()
    if planned:
        plan = state.for_group(0)
        plan.slots[0] = CleanPlan("CLEAN CONNECTION TO ALL").start()
        plan.spans = ((0, 5, 50),)
    outcomes: list[object] = []
    stream = module.BackendStream(
        state, lambda shaping, error: outcomes.append((type(shaping).__name__, error))
    )
    stream.strip_scram_plus = strip
    trace = _run(stream.feed, data, cuts)
    return (
        trace,
        _state_of(state),
        outcomes,
        stream.at_message_boundary(),
        stream.strip_scram_plus,
        stream.answering_group,
    )


@SETTINGS
@given(
    st.lists(messages(FRONTEND_TYPES), max_size=12),
    st.binary(max_size=30),
    st.sampled_from(["fresh", "auth-requested", "authenticated", "ready"]),
    st.sampled_from([64, 1 << 16, (1 << 30) - 1]),
    st.integers(0, 10_000),
)
@example([b"Q\xff\xff\xff\xffselect 1\0"], b"", "ready", (1 << 30) - 1, 0)
@example([b"d\x80\x00\x00\x00abc"], b"", "ready", 1 << 16, 0)
def test_frontend_builds_agree(
    msgs: list[bytes], tail: bytes, phase: str, max_size: int, seed: int
) -> None:
    data = b"".join(msgs) + tail
    cuts = _splits(len(data), seed)
    assert _frontend(compiled, phase, max_size, data, cuts) == _frontend(
        interpreted, phase, max_size, data, cuts
    )


@SETTINGS
@given(
    st.lists(messages(BACKEND_TYPES), max_size=12),
    st.binary(max_size=30),
    st.booleans(),
    st.booleans(),
    st.integers(0, 10_000),
)
@example([b"D\xff\xff\xff\xff" + b"x" * 10], b"", False, False, 0)
@example([b"Z\x00\x00\x00\x05I", b"D\x80\x00\x00\x00" + b"x" * 10], b"", False, False, 0)
def test_backend_builds_agree(
    msgs: list[bytes], tail: bytes, planned: bool, strip: bool, seed: int
) -> None:
    data = b"".join(msgs) + tail
    cuts = _splits(len(data), seed)
    assert _backend(compiled, planned, strip, data, cuts) == _backend(
        interpreted, planned, strip, data, cuts
    )


@pytest.mark.parametrize("length", [1 << 31, (1 << 32) - 1])
def test_frontend_length_in_upper_half_reports_the_same_violation(length: int) -> None:
    """The FATAL text names the header's length as the client sent it (unsigned)."""
    data = b"Q" + struct.pack("!I", length) + b"select 1\0"
    traces = [
        _frontend(module, "ready", (1 << 30) - 1, data, [(0, len(data))])[0]
        for module in (interpreted, compiled)
    ]
    assert traces[0] == [("ProtocolViolation", f"invalid message length {length}")]
    assert traces[1] == traces[0]


@pytest.mark.parametrize("length", [1 << 31, (1 << 32) - 1])
def test_backend_length_in_upper_half_is_framed_the_same(length: int) -> None:
    """A server message claiming 2..4 GB: with no plan outstanding, the same framing in
    both builds (the interpreted build streams it through; so does its shaping path)."""
    data = b"D" + struct.pack("!I", length) + b"x" * 10
    traces = [
        _backend(module, False, False, data, [(0, len(data))]) for module in (interpreted, compiled)
    ]
    assert traces[1] == traces[0]
