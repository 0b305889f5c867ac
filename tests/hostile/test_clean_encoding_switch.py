"""Names are decoded in the client encoding in force when the query string arrived.

PostgreSQL converts a whole simple-Query string with the client encoding in force when it
receives it, so in ``SET client_encoding ...; CLEAN CONNECTION ... "é"`` the name is in the
*old* encoding, although the SET has run by the time the CLEAN does. The program must not
ask the server for its client encoding at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from grammar import parse_clean_connection
from proxy.clean_program import render_program
from tests.conftest import PgServer, ProxyProcess
from tests.e2e.victims import Victims

# (encoding of the session, encoding the string switches to, database name)
SWITCHES = [
    ("UTF8", "LATIN1", "é_switch"),
    ("LATIN1", "UTF8", "Ünïcödé_switch"),
    ("SJIS", "UTF8", "表示_switch"),  # 表 is 0x95 0x5C in SJIS: a trail byte like "\"
    ("UTF8", "SJIS", "表示_switch2"),
]


@pytest.mark.parametrize(("before", "after", "name"), SWITCHES)
def test_set_client_encoding_then_clean_in_one_query_string(
    proxy: ProxyProcess,
    pg: PgServer,
    victims: Victims,
    make_db: Callable[..., str],
    before: str,
    after: str,
    name: str,
) -> None:
    db = make_db(name)
    bystander = make_db()
    victims.open("target", pg.dsn(db))
    victims.open("bystander", pg.dsn(bystander))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"SET client_encoding TO '{before}'")
        # psycopg encodes the whole string in the session's encoding (``before``).
        cur = conn.execute(
            f"SET client_encoding TO '{after}'; CLEAN CONNECTION TO ALL FORCE FOR DATABASE \"{name}\""
        )
        assert cur.statusmessage == "SET"
        assert cur.nextset() and cur.statusmessage == "CLEAN CONNECTION"
        assert conn.execute("SHOW client_encoding").fetchone() == (after,)
    victims.assert_fate({"target"})


def test_program_embeds_the_encoding_as_a_literal() -> None:
    program = render_program(
        parse_clean_connection('CLEAN CONNECTION TO ALL FOR DATABASE "表示" TO USER u'),
        codec="shift_jis",
        encoding="SJIS",
        wait_seconds=1.0,
        check_seconds=1.0,
    )
    assert program.isascii()
    assert "pg_client_encoding" not in program
    hex_name = "表示".encode("shift_jis").hex()
    assert f"pg_catalog.convert_from(pg_catalog.decode('{hex_name}', 'hex'), 'SJIS')" in program


@pytest.mark.parametrize("encoding", ["sjis", "UTF-8", "UTF8'", "LATIN1') --", "", "É"])
def test_encoding_names_outside_the_server_alphabet_are_refused(encoding: str) -> None:
    with pytest.raises(ValueError):
        render_program(
            parse_clean_connection("CLEAN CONNECTION TO ALL FOR DATABASE d"),
            codec="utf-8",
            encoding=encoding,
            wait_seconds=1.0,
            check_seconds=1.0,
        )
