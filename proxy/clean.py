"""CLEAN CONNECTION on stock PostgreSQL: the rewrite, the server-side program, the audit.

A valid statement is replaced, in place in the client's query string, by a ``DO`` block
that the server runs in the caller's own session with the caller's privileges
(DESIGN.md §4): validation in openGauss's order, the optional CHECK, then
``pg_terminate_backend`` on the matching client backends the caller may signal, and a
bounded wait for them to exit. The proxy then shapes that statement's replies
(:mod:`proxy.streams`): tag ``CLEAN CONNECTION``, no PL/pgSQL CONTEXT, and the final
``INFO`` audit line with the counts is consumed, never forwarded.

Names are data: they are embedded as hex of the client's own bytes and decoded on the
server with ``convert_from(decode('…', 'hex'), pg_client_encoding())``. The generated text
is pure ASCII with no quotes or backslashes from the client, so it is inert whatever
``standard_conforming_strings`` or the client encoding say.

A string holding an *invalid* CLEAN CONNECTION is sent unchanged: the server rejects the
whole string at the ``CLEAN`` token (nothing in it runs, the transaction state is the
server's), and the proxy replaces that syntax error's text and position with the
grammar's (``SyntaxFix``).
"""

from __future__ import annotations

import logging
import time

from grammar import Statement, might_contain_clean, split_statements

from .clean_program import render_program
from .session import Session
from .streams import Rewrite, ShapedStatement, SyntaxFix

audit_log = logging.getLogger("pgdp.audit")


# PostgreSQL client encodings → Python codecs. Decoding with the session's real encoding
# makes character positions match the server's count and keeps multibyte names intact.
_CODECS = {
    "UTF8": "utf-8",
    "SQL_ASCII": "latin-1",  # bytes as they are: latin-1 maps each byte to one character
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
    "SJIS": "shift_jis",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}


def _decode(sql: bytes, client_encoding: str) -> tuple[str, str]:
    """The query text and the codec that maps it back to the client's exact bytes.

    Uses the session's client encoding; bytes that do not decode (or an encoding Python
    lacks) fall back to latin-1, which round-trips any bytes (the keywords are ASCII).
    """
    codec = _CODECS.get(client_encoding.upper(), "latin-1")
    try:
        return sql.decode(codec), codec
    except UnicodeDecodeError:
        return sql.decode("latin-1"), "latin-1"


def rewrite_query(
    sql: bytes,
    *,
    wait_seconds: float,
    check_seconds: float,
    client_encoding: str = "UTF8",
) -> Rewrite | None:
    """The :class:`Rewrite` for a Query/Parse text, or None when it has no CLEAN statement.

    ``wait_seconds`` bounds the wait for terminated sessions to exit; ``check_seconds``
    how long CHECK waits for other sessions to leave before it reports them (55006).
    """
    text, codec = _decode(sql, client_encoding)
    statements = split_statements(text)
    if statements is None:
        return None  # unscannable: the server reports its own error
    cleans = [s for s in statements if s.is_clean]
    if not cleans:
        return None
    first_error = next((s.error for s in cleans if s.error is not None), None)
    if first_error is not None:
        fix = SyntaxFix(
            server_position=str(cleans[0].body_start + 1).encode(),
            message=first_error.message.encode(codec, "replace"),
            position=str(first_error.position).encode(),
        )
        return Rewrite(sql, syntax_fix=fix)
    return _rewrite_valid(
        text, codec, client_encoding.upper(), statements, wait_seconds, check_seconds
    )


def _rewrite_valid(
    text: str,
    codec: str,
    client_encoding: str,
    statements: list[Statement],
    wait_seconds: float,
    check_seconds: float,
) -> Rewrite:
    parts: list[str] = []
    renamed: list[tuple[int, str]] = []
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    index = 0
    for statement in statements:
        if statement.is_empty:
            continue
        if statement.clean is not None:
            original = text[statement.body_start : statement.body_end]
            parts.append(text[cursor : statement.body_start])
            program = render_program(
                statement.clean,
                codec=codec,
                encoding=client_encoding,
                wait_seconds=wait_seconds,
                check_seconds=check_seconds,
            )
            parts.append(program)
            spans.append((statement.body_start, len(original), len(program)))
            cursor = statement.body_end
            renamed.append((index, original))
        index += 1
    parts.append(text[cursor:])
    return Rewrite("".join(parts).encode(codec), renamed=tuple(renamed), spans=tuple(spans))


class CleanConnectionDialect:
    """The openGauss CLEAN CONNECTION statement, for :class:`proxy.server.ProxyServer`."""

    def __init__(self, wait_seconds: float = 15.0, check_seconds: float = 5.0) -> None:
        self.wait_seconds = wait_seconds
        self.check_seconds = check_seconds

    might_rewrite = staticmethod(might_contain_clean)

    def attach(self, session: Session) -> None:
        wait, check = self.wait_seconds, self.check_seconds

        def rewrite(sql: bytes) -> Rewrite | None:
            backend = session.backend
            return rewrite_query(
                sql,
                wait_seconds=wait,
                check_seconds=check,
                client_encoding=backend.client_encoding if backend else "UTF8",
            )

        def on_outcome(
            shaped: ShapedStatement, tag: bytes, error: list[tuple[int, bytes]] | None
        ) -> None:
            _audit(session, shaped, error)

        session.rewrite = rewrite
        session.on_outcome = on_outcome


def _audit(
    session: Session, shaped: ShapedStatement, error: list[tuple[int, bytes]] | None
) -> None:
    """One structured line per execution of a CLEAN CONNECTION statement."""
    duration = time.monotonic() - shaped.sent_at
    if error is None:
        counts = shaped.counts
        outcome = (
            f"result=ok terminated={counts.get('terminated', 0)} "
            f"skipped={counts.get('skipped', 0)} remaining={counts.get('remaining', 0)}"
        )
    else:
        fields = dict(error)
        sqlstate = fields.get(ord("C"), b"").decode(errors="replace")
        text = fields.get(ord("M"), b"").decode(errors="replace")
        outcome = f"result=error sqlstate={sqlstate} message={text!r}"
    audit_log.info(
        "clean_connection %s statement=%r %s duration=%.3fs",
        session.describe(),
        shaped.text,
        outcome,
        duration,
    )
