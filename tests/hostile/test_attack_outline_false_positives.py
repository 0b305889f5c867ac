"""Attacks (h4): texts where the outline scanner reports a CLEAN CONNECTION statement
start that PostgreSQL reads inside a literal.

Each test states what should happen; they fail on the proxy as committed (3884f4d).
"""

from __future__ import annotations

import psycopg
import pytest

from grammar.outline import MaskedScanner, lead_statements
from tests.conftest import PgServer, ProxyProcess

# Two different SJIS kanji whose trail bytes mask_trail_bytes() maps to the same \x80\x80.
A = b"\x88\x9f"
B = b"\x88\xa0"
CLEAN = b"clean connection to all force for database postgres"


def _sjis_text(tail: bytes = b"") -> bytes:
    # PostgreSQL: one string literal $A$ ... $A$ (tag $B$ differs from $A$), then a comment.
    # The scanner (masked): $A$ closes at $B$, so "clean connection ..." is a statement.
    return (
        b"select $"
        + A
        + b"$ $"
        + B
        + b"$; "
        + CLEAN
        + b"; $"
        + A
        + b"$"
        + tail
        + b" /* $"
        + B
        + b"$ */"
    )


def test_masked_dollar_tags_are_distinct_for_the_scanner() -> None:
    text = _sjis_text() + b"\0"
    scan = MaskedScanner("SJIS", start=0)
    scan.feed(text, len(text))
    # PostgreSQL sees no statement starting with "clean" here.
    assert scan.uncertain or not scan.leads, [(lead.start, lead.end) for lead in scan.leads]


def _run(dsn: str, query: bytes, notices: list[str] | None = None) -> list[tuple[str | None, list]]:
    results = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set client_encoding to 'SJIS'")
        if notices is not None:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        cur = conn.execute(query)
        while True:
            results.append((cur.statusmessage, cur.fetchall() if cur.description else []))
            if not cur.nextset():
                break
    return results


def test_sjis_literal_holding_clean_is_returned_unchanged(
    pg: PgServer, proxy: ProxyProcess
) -> None:
    """The client's string data must come back as sent (direct == through the proxy)."""
    query = _sjis_text()
    direct = _run(pg.dsn(), query)
    through = _run(proxy.dsn(), query)
    assert direct == [("SELECT 1", [(" $唖$; " + CLEAN.decode() + "; ",)])]
    assert through == direct  # fails: the literal now holds the generated DO block


def test_sjis_desync_forges_tag_and_audit(pg: PgServer, proxy: ProxyProcess) -> None:
    """The client's own DO is renamed CLEAN CONNECTION and its INFO becomes the audit."""
    tail = b"; DO $$begin raise info 'pgdp:audit terminated=4242 skipped=0 remaining=0'; end$$"
    query = _sjis_text(tail)
    notices: list[str] = []
    through = _run(proxy.dsn(), query, notices)
    direct_notices: list[str] = []
    direct = _run(pg.dsn(), query, direct_notices)
    assert [tag for tag, _ in direct] == ["SELECT 1", "DO"]
    assert [tag for tag, _ in through] == ["SELECT 1", "DO"]  # fails: "CLEAN CONNECTION"
    assert "terminated=4242" not in proxy.log()  # fails: forged audit record


def test_sjis_desync_non_utf8_audit_marker_kills_session(pg: PgServer, proxy: ProxyProcess) -> None:
    """A non-UTF-8 key in a shaped INFO: UnicodeDecodeError in _parse_counts
    (proxy/streams.py:875), the session is closed as an internal error."""
    tail = b"; DO $$begin raise info 'pgdp:audit " + A + b"=1'; end$$"
    query = _sjis_text(tail)
    _run(pg.dsn(), query)
    _run(proxy.dsn(), query)  # fails: OperationalError, server closed the connection
    assert "UnicodeDecodeError" not in proxy.log()


@pytest.mark.parametrize("prefix", [b"b'0'", b"x'0'"])
def test_bit_string_doubled_quote_with_scs_off(
    pg: PgServer, proxy: ProxyProcess, prefix: bytes
) -> None:
    """In B''/X'' strings '' is not an escaped quote (scan.l has xqdouble only in xq, xe,
    xus): b'0''\\'; clean ...; --' is BCONST then an escape string holding the CLEAN text
    when standard_conforming_strings is off. The scanner takes b'0''\\' as one string."""
    text = b"select " + prefix + b"'\\'; " + CLEAN + b"; --'"
    scan = lead_statements(text, standard_conforming_strings=False)
    assert scan.uncertain or not scan.leads  # fails: a lead at the CLEAN
    errors = []
    for dsn in (pg.dsn(), proxy.dsn()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("set standard_conforming_strings = off")
            with pytest.raises(psycopg.errors.SyntaxError) as info:
                conn.execute(text)
            errors.append(str(info.value))
    # fails: the proxy's error quotes the generated DO program the client never sent
    assert errors[0] == errors[1]
