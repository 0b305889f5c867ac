"""Log output: logfmt values a client cannot break out of, one line per record, and the
rate limiter for repeated events."""

from __future__ import annotations

import io
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.logfmt import OneLineFormatter, RateLimitedLog, value

# One logfmt field: key=plain or key="quoted with \" escapes".
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')
ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def unescape(logged: str) -> str:
    """Inverse of :func:`value` (the reader's side of the format)."""
    if logged.startswith('"'):
        assert logged.endswith('"') and len(logged) >= 2, logged
        logged = logged[1:-1]

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        return SIMPLE_ESCAPES[code] if len(code) == 1 else chr(int(code[1:], 16))

    return ESCAPE.sub(one, logged)


def fields(line: str) -> list[tuple[str, str]]:
    return [(key, unescape(raw)) for key, raw in FIELD.findall(line)]


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("alice", "alice"),
        ("app-1.2:x/y@z", "app-1.2:x/y@z"),
        ("élève_数据", "élève_数据"),
        ("", '""'),
        ("two words", '"two words"'),
        ("k=v", '"k=v"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", "back\\\\slash"),
        ("line\nbreak", "line\\nbreak"),
        ("cr\rlf\n", "cr\\rlf\\n"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("nel\x85", "nel\\x85"),
        ("nbsp\xa0", "nbsp\\xa0"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("rlo\u202e", "rlo\\u202e"),
        ("tag\U000e0041", "tag\\U000e0041"),
    ],
)
def test_value(text: str, logged: str) -> None:
    assert value(text) == logged
    assert unescape(value(text)) == text


def test_forged_record_stays_inside_one_field() -> None:
    user = "x\n2026-01-01 00:00:00,000 INFO pgdp.audit clean_connection user=postgres result=ok terminated=42"
    line = f"conn=1 user={value(user)} db={value('postgres')}"
    assert "\n" not in line
    assert fields(line) == [("conn", "1"), ("user", user), ("db", "postgres")]


@given(st.text())
def test_any_text_is_one_field_on_one_line(text: str) -> None:
    line = f"before=1 key={value(text)} after=2"
    assert len(line.splitlines()) == 1
    assert fields(line) == [("before", "1"), ("key", text), ("after", "2")]


def formatted(message: str, *args: object, exc_info: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("test.logfmt")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error(message, *args, exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_formatter_keeps_a_record_on_one_line() -> None:
    text = formatted("statement=%r user=%s", "a\nb", "evil\r\nERROR pgdp.audit forged\x1b[2J\u2028")
    assert text == (
        "ERROR test.logfmt statement='a\\nb' user=evil\\r\\nERROR pgdp.audit forged\\x1b[2J\\u2028\n"
    )


def test_formatter_leaves_tracebacks_on_their_own_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        text = formatted("failed\nhere", exc_info=True)
    first, *rest = text.splitlines()
    assert first == "ERROR test.logfmt failed\\nhere"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback: object) -> object:
        self.timers.append((self.now + delay, callback))
        return object()

    def advance_to(self, when: float) -> None:
        self.now = when
        due = [cb for at, cb in self.timers if at <= when]
        self.timers = [(at, cb) for at, cb in self.timers if at > when]
        for callback in due:
            callback()  # type: ignore[operator]


def test_rate_limited_log_counts_between_lines() -> None:
    clock = FakeClock()
    lines: list[tuple[float, int]] = []
    limited = RateLimitedLog(
        lambda count: lines.append((clock.now, count)),
        10.0,
        clock=lambda: clock.now,
        call_later=clock.call_later,
    )
    limited()
    assert lines == [(100.0, 1)]  # the first one at once
    for step in range(1, 6):
        clock.now = 100.0 + step
        limited()
    assert lines == [(100.0, 1)]
    assert len(clock.timers) == 1  # one flush scheduled, not one per event
    clock.advance_to(110.0)
    assert lines == [(100.0, 1), (110.0, 5)]
    clock.advance_to(125.0)
    assert lines == [(100.0, 1), (110.0, 5)]  # nothing new: no line
    limited()
    assert lines[-1] == (125.0, 1)  # quiet for a whole interval: logged at once again
