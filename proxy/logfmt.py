"""Log output that clients cannot forge: logfmt-style values, one record per line, and
rate-limited lines for events a client can repeat at will.

Anything a client sends (user, database, application name, bytes quoted in an error) is
logged through :func:`value`; :class:`OneLineFormatter` is the safety net for text that is
not, so that one record is always one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
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


# --- JSON lines ----------------------------------------------------------------------

_PAIR = re.compile(r'([a-z_][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')
_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_SIMPLE_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def unquote(text: str) -> str:
    """The inverse of :func:`value`: the original text of one logfmt value."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) > 1:
            return chr(int(code[1:], 16))
        return _SIMPLE_UNESCAPES.get(code, code)

    return _UNESCAPE.sub(one, text)


def pairs(message: str) -> tuple[dict[str, str], str]:
    """The ``key=value`` fields of a log message (values unescaped) and its other words,
    which name the event (``opened``, ``closed``, ``listening on ...``)."""
    found: dict[str, str] = {}
    words: list[str] = []
    at = 0
    for match in _PAIR.finditer(message):
        words.append(message[at : match.start()])
        found.setdefault(match.group(1), unquote(match.group(2)))
        at = match.end()
    words.append(message[at:])
    return found, " ".join(" ".join(words).split())


_EVENT_WORD = re.compile(r"[A-Za-z][A-Za-z_-]*")


def event_name(words: str) -> str:
    """What a log line says happened, stable from one line to the next: the leading plain
    words of its text (``opened``, ``protocol violation``, ``listening on``), without the
    numbers, addresses and details that follow (up to the first ``:`` or ``,``)."""
    found: list[str] = []
    for word in words.split():
        bare = word.rstrip(":,;")
        if not _EVENT_WORD.fullmatch(bare):
            break
        found.append(bare)
        if bare != word:
            break
    return " ".join(found) or words


class JsonFormatter(logging.Formatter):
    """One JSON object per line with stable field names: ``time`` (UTC, ISO 8601),
    ``level``, ``logger``, ``pid``, ``event`` (:func:`event_name`), the message's ``key=value`` fields (``conn``,
    ``client``, ``user``, ``db``, ``app``, ...), ``message`` (the whole text line), and
    any mapping passed as ``extra={"fields": {...}}`` (the audit record's). Non-ASCII and
    control characters are escaped by the JSON encoding: a record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        found, event = pairs(message)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": getattr(record, "event", None) or event_name(event),
        }
        for key, text in found.items():
            entry.setdefault(key, text)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def make_formatter(log_format: str, *, workers: bool) -> logging.Formatter:
    """The formatter for ``--log-format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    return OneLineFormatter(
        "%(asctime)s %(levelname)s %(name)s" + ("[%(process)d]" if workers else "") + " %(message)s"
    )


def configure_logging(level: str, log_format: str, *, workers: bool = False) -> None:
    """Records on stderr in ``log_format`` at ``level``; called again on reload, it
    changes the format and level of the same handler."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "pgdp", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.pgdp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(make_formatter(log_format, workers=workers))
    root.setLevel(level.upper())
