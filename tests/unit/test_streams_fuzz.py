"""Random and mutated messages of every type, before and after login, into both streams.

Whatever arrives, a stream either returns chunks or raises ProtocolViolation (which the
relay turns into FATAL 08P01 and a closed connection): never another exception. Bytes that
hold nothing to rewrite come out exactly as they went in, however the reads split them.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.clean import CleanConnectionDialect, CleanPlan
from proxy.streams import BackendStream, FrontendStream, SessionState
from proxy.wire import ProtocolViolation

# Every test runs on the interpreted and the compiled build (tests/unit/conftest.py).
pytestmark = pytest.mark.usefixtures("stream_build")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FRONTEND_TYPES = b"QPBEDCSHFdcfXp" + bytes([0, 0xFF, ord("Z")])
BACKEND_TYPES = b"RSKZTDCIsENAtn123cdGHWV" + bytes([0, 0xFF])
SNIPPETS = [
    b"clean connection to all for d",
    b"CLEAN CONNECTION TO ALL FORCE",
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
    b"E'",
    b"\x00\x00\x00\x02",
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
    how = draw(st.sampled_from(["ok"] * 6 + ["short", "long", "tiny", "huge"]))
    if how == "short":
        length = max(0, length - draw(st.integers(1, 6)))
    elif how == "long":
        length += draw(st.integers(1, 6))
    elif how == "tiny":
        length = draw(st.integers(0, 3))
    elif how == "huge":
        length = draw(st.integers(1 << 20, (1 << 32) - 1))
    return bytes([kind]) + struct.pack("!I", length) + body


def feed_all(feed, data: bytes, rng: random.Random) -> bytes:  # type: ignore[no-untyped-def]
    out = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        out.extend(feed(data[pos : pos + step]))
        pos += step
    return b"".join(bytes(chunk) for chunk in out)


def frontend_state(phase: str) -> SessionState:
    state = SessionState()
    if phase == "auth-requested":
        state.auth_request = 10
    elif phase == "ready":
        state.authenticated = state.ready = True
        state.answering_group = 0
    return state


@SETTINGS
@given(
    st.lists(messages(FRONTEND_TYPES), max_size=12),
    st.binary(max_size=30),
    st.sampled_from(["fresh", "auth-requested", "ready"]),
    st.integers(0, 10_000),
)
def test_frontend_never_raises_anything_but_protocol_violation(
    msgs: list[bytes], tail: bytes, phase: str, seed: int
) -> None:
    data = b"".join(msgs) + tail
    stream = FrontendStream(
        frontend_state(phase), max_message_size=1 << 16, dialect=CleanConnectionDialect()
    )
    try:
        out = feed_all(stream.feed, data, random.Random(seed))
    except ProtocolViolation:
        return
    lowered = data.lower()
    if b"clean" not in lowered:
        # nothing to rewrite: what was forwarded is a prefix of the input
        assert data.startswith(out)


@SETTINGS
@given(
    st.lists(messages(BACKEND_TYPES), max_size=12),
    st.binary(max_size=30),
    st.booleans(),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_backend_never_raises_anything_but_protocol_violation(
    msgs: list[bytes], tail: bytes, planned: bool, strip: bool, seed: int
) -> None:
    data = b"".join(msgs) + tail
    state = SessionState()
    if planned:
        plan = state.for_group(0)
        plan.slots[0] = CleanPlan("CLEAN CONNECTION TO ALL").start()
        plan.spans = ((0, 5, 50),)
    stream = BackendStream(state, lambda *args: None)
    stream.strip_scram_plus = strip
    try:
        out = feed_all(stream.feed, data, random.Random(seed))
    except ProtocolViolation:
        return
    if not planned and not strip:
        assert data.startswith(out)


def test_parse_without_terminator_is_a_protocol_violation() -> None:
    """A Parse holding the keywords but no NUL, after login: PostgreSQL's 08P01."""
    body = b"s1\0clean connection to all"
    stream = FrontendStream(
        frontend_state("ready"), max_message_size=1 << 16, dialect=CleanConnectionDialect()
    )
    try:
        stream.feed(b"P" + struct.pack("!I", len(body) + 4) + body)
    except ProtocolViolation as exc:
        assert "invalid string in message" in str(exc)
    else:
        raise AssertionError("accepted a Parse without its terminator")


def test_login_accepts_only_authentication_responses() -> None:
    stream = FrontendStream(frontend_state("auth-requested"), max_message_size=1 << 30)
    try:
        stream.feed(b"Q" + struct.pack("!I", 9) + b"clean")
    except ProtocolViolation as exc:
        assert str(exc) == "expected SASL response, got message type 81"
    else:
        raise AssertionError("a query was accepted while authenticating")
    stream = FrontendStream(frontend_state("auth-requested"), max_message_size=1 << 30)
    try:  # a password message longer than PostgreSQL accepts: refused on its header
        stream.feed(b"p" + struct.pack("!I", 500_000_000))
    except ProtocolViolation as exc:
        assert str(exc) == "invalid message length"
    else:
        raise AssertionError("an oversized password message was accepted")


def test_nothing_is_held_before_login() -> None:
    """A large message before login streams through: no byte waits for the rest."""
    stream = FrontendStream(
        frontend_state("fresh"), max_message_size=1 << 30, dialect=CleanConnectionDialect()
    )
    header = b"Q" + struct.pack("!I", 100_000_004)
    assert b"".join(stream.feed(header)) == header
    chunk = b"clean connection 1," * 1000
    assert b"".join(stream.feed(chunk)) == chunk


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=st.binary(max_size=80)
    | st.lists(st.sampled_from([b"clean", b"CLEAN", b"cLeAn", b"clea", b"x", b"\x80", b"@"])).map(
        b"".join
    ),
    word=st.sampled_from([b"clean", b"c", b"deallocate"]),
    cut=st.integers(0, 3),
)
def test_contains_word_is_a_case_insensitive_find(
    stream_build, body: bytes, word: bytes, cut: int
) -> None:
    """The compiled stream's pre-test without a call agrees with the dialect's own."""
    data = b"\xff" * cut + body + b"\xfe" * cut
    expected = body.lower().find(word) >= 0
    assert stream_build.contains_word(data, cut, cut + len(body), word) is expected
    if word == b"clean":
        assert CleanConnectionDialect.might_rewrite(body) is expected
