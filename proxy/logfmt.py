"""Log output that clients cannot forge: logfmt-style values, one record per line, and
rate-limited lines for events a client can repeat at will.

Anything a client sends (user, database, application name, bytes quoted in an error) is
logged through :func:`value`; :class:`OneLineFormatter` is the safety net for text that is
not, so that one record is always one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: every
# character some log reader may take for a line break or a terminal command.
_LINE_BREAKING = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_VALUE_ESCAPES = {**_LINE_BREAKING, ord("\\"): "\\\\", ord('"'): '\\"'}
_NEEDS_QUOTES = frozenset(' ="')
_NOT_PLAIN = frozenset(' ="\\')


def value(text: str) -> str:
    """``text`` as one logfmt value: unchanged when it is plain printable text, else with
    ``\\``, ``"``, control and other non-printable characters backslash-escaped
    (``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``), and between double quotes when
    it is empty or contains a space, ``=`` or ``"``. The result never contains a line
    break, and a value never reads as more than one ``key=value`` field."""
    if text and text.isprintable() and _NOT_PLAIN.isdisjoint(text):
        return text
    escaped = "".join(_escape_char(c) for c in text)
    if not text or not _NEEDS_QUOTES.isdisjoint(text):
        return f'"{escaped}"'
    return escaped


def _escape_char(char: str) -> str:
    known = _VALUE_ESCAPES.get(ord(char))
    if known is not None:
        return known
    if char.isprintable() or char == " ":
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records are one line each: control characters in
    the formatted message are escaped; a traceback (``exc_info``) still follows on lines
    of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_LINE_BREAKING)


class RateLimitedLog:
    """One log line per ``interval`` seconds at most for a repeated event, with how many
    times it happened since the previous line.

    The first occurrence is logged at once; later ones within ``interval`` are counted and
    reported in one line when the interval is over (scheduled on the running loop through
    ``call_later``). ``emit(count)`` writes the line for ``count`` occurrences.
    """

    __slots__ = ("_call_later", "_clock", "_count", "_emit", "_flush_handle", "_interval", "_next")

    def __init__(
        self,
        emit: Callable[[int], None],
        interval: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock
        self._call_later = call_later
        self._next = float("-inf")  # when the next line may be written
        self._count = 0  # occurrences not yet reported
        self._flush_handle: object | None = None

    def __call__(self) -> None:
        """Record one occurrence."""
        self._count += 1
        now = self._clock()
        if now >= self._next:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._schedule(self._next - now)

    def _schedule(self, delay: float) -> object:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        return call_later(delay, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._count:
            count, self._count = self._count, 0
            self._next = self._clock() + self._interval
            self._emit(count)
