"""Attacks on how the proxy looks for CLEAN CONNECTION in what clients send.

Before login nothing is inspected or held; after login a huge query costs the attacker,
not everyone else; strings are read with the session's real settings and encoding; what
cannot be judged exactly passes through untouched, and nothing runs that would not run
directly against PostgreSQL.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess, wait_until
from tests.e2e.victims import Victims
from tests.rawpg import (
    error_fields,
    handshake,
    query_message,
    read_error_then_close,
    read_message,
    read_until_ready,
    startup_packet,
)


def _auth_request(sock: socket.socket) -> int:
    msg = read_message(sock)
    assert msg is not None and msg[0] == b"R", msg
    return struct.unpack("!I", msg[1][:4])[0]


# --- before login ---------------------------------------------------------------------


def test_query_while_authenticating_is_refused_on_its_type_byte(proxy: ProxyProcess) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(startup_packet("pw_user"))
        assert _auth_request(sock) == 3  # cleartext password requested
        # only the header and a little of a 500 MB query: refused at once
        sock.sendall(b"Q" + struct.pack("!I", 500_000_004) + b"clean connection 1,1,1")
        fields = read_error_then_close(sock)
    assert fields is not None
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert fields["M"] == "expected password response, got message type 81"


def test_oversized_password_message_is_refused_on_its_header(proxy: ProxyProcess) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(startup_packet("scram_user"))
        assert _auth_request(sock) == 10  # SASL
        sock.sendall(b"p" + struct.pack("!I", 400_000_000))
        fields = read_error_then_close(sock)
    assert fields is not None and fields["C"] == "08P01"
    assert fields["M"] == "invalid message length"


def test_unauthenticated_big_messages_hold_no_memory(proxy: ProxyProcess) -> None:
    """Four clients pipeline a 100 MB query behind their startup packet, before the server
    has even asked for a password, and stop short: nothing is held for them."""
    baseline = proxy.rss_kb()
    socks = []
    chunk = b"clean connection 1," * 100_000  # 1.9 MB
    try:
        for _ in range(4):
            sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
            socks.append(sock)
            sock.sendall(startup_packet("pw_user") + b"Q" + struct.pack("!I", 100_000_004))
            try:
                for _ in range(4):
                    sock.sendall(chunk)
            except OSError:
                pass  # refused: the server read "Q" where it expected a password
        assert proxy.rss_kb() - baseline < 12_000
    finally:
        for sock in socks:
            sock.close()
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def _peak_rss_kb(proxy: ProxyProcess) -> int:
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


# --- after login: a huge query with CLEAN CONNECTION everywhere ---------------------------


def _huge_query(size: int) -> str:
    unit = (
        "select 'clean connection to all force; -- not a statement', 1 "
        "/* ; clean connection to all force */ ; "
    )
    return unit * (size // len(unit)) + "CLEAN CONNECTION TO ALL FOR DATABASE nosuchdb_hostile"


def test_ten_megabyte_query_is_judged_and_others_keep_working(
    proxy: ProxyProcess, pg: PgServer
) -> None:
    stop = threading.Event()
    answered = []

    def bystander() -> None:
        with proxy.connect() as conn:
            while not stop.is_set():
                answered.append(conn.execute("select 1").fetchone())

    thread = threading.Thread(target=bystander, daemon=True)
    thread.start()
    baseline = proxy.rss_kb()
    peak_before = _peak_rss_kb(proxy)
    try:
        wait_until(lambda: answered, 10, "the bystander to run")
        with proxy.connect() as conn, pytest.raises(psycopg.errors.InvalidCatalogName) as info:
            conn.execute(_huge_query(10 << 20))
        assert info.value.diag.message_primary == 'database "nosuchdb_hostile" does not exist'
        seen = len(answered)
        wait_until(lambda: len(answered) > seen, 10, "the bystander to go on")
        # the message, a copy and the rewritten text at most (10 MB each)
        assert _peak_rss_kb(proxy) - max(peak_before, baseline) < 3 * 10_240 + 10_000
    finally:
        stop.set()
        thread.join(10)
    # released with the session (not cached by the proxy)
    wait_until(lambda: proxy.rss_kb() - baseline < 40_000, 10, "memory to be released")


# --- strings read with the session's settings and encoding ---------------------------------


def test_backslash_quote_with_standard_conforming_strings_off(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db: Callable[..., str]
) -> None:
    target = make_db()
    victims.open("bystander", pg.dsn(target))
    literal = f"it\\'s; clean connection to all force for database {target}; --"
    with proxy.connect() as conn:
        conn.execute("set standard_conforming_strings = off")
        conn.execute("set escape_string_warning = off")
        row = conn.execute(f"select '{literal}'").fetchone()
    assert row == (literal.replace("\\'", "'"),)
    victims.assert_fate(set())


def test_invalid_utf8_inside_clean_runs_nothing(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db: Callable[..., str]
) -> None:
    """PostgreSQL rejects the whole string; the proxy must not run part of it."""
    target, home = make_db(), make_db()
    with pg.connect(dbname=home) as conn:
        conn.execute("create table t (v int)")
    victims.open("bystander", pg.dsn(target))
    text = (
        b"insert into t values (1); clean connection /* \xff\xfe */ to all force for database "
        + target.encode()
    )
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(startup_packet(pg.user, home))
        read_until_ready(sock)
        sock.sendall(query_message(text))
        replies = read_until_ready(sock)
    errors = [error_fields(body) for kind, body in replies if kind == b"E"]
    assert [e["C"] for e in errors] == ["22021"]
    with pg.connect(dbname=home) as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)
    victims.assert_fate(set())


def test_sjis_name_with_a_windows_932_character(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db: Callable[..., str]
) -> None:
    """0x8740 (①) is in PostgreSQL's SJIS (Windows-932) but not in Python's shift_jis."""
    name = "①db"
    target = make_db(name)
    victims.open("target", pg.dsn(target))
    with proxy.connect() as conn:
        conn.execute("set client_encoding to 'SJIS'")
        # psycopg's shift_jis codec lacks it too: send the client's bytes as they are
        statement = b'CLEAN CONNECTION TO ALL FORCE FOR DATABASE "%s"' % name.encode("cp932")
        cur = conn.execute(statement)
        assert cur.statusmessage == "CLEAN CONNECTION"
    victims.assert_fate({"target"})


def test_sjis_trail_backslash_next_to_a_windows_932_character(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db: Callable[..., str]
) -> None:
    """表 is 0x95 0x5C in SJIS: its trail byte is a backslash to a byte-wise reader. Next
    to ① (0x8740, which Python's shift_jis lacks) it must still not end a string early."""
    target = make_db()
    victims.open("bystander", pg.dsn(target))
    literal = f"; clean connection to all force for database {target}; --"
    text = f"select E'①表' is not null, '{literal}'".encode("cp932")
    with proxy.connect() as conn:
        conn.execute("set client_encoding to 'SJIS'")
        row = conn.execute(text).fetchone()
    assert row == (True, literal)
    victims.assert_fate(set())


def test_pipelined_encoding_change_is_not_guessed(
    proxy: ProxyProcess, pg: PgServer, victims: Victims, make_db: Callable[..., str]
) -> None:
    """A CLEAN with non-ASCII bytes sent before the server confirmed an earlier
    ``SET client_encoding`` is not rewritten on a guess: the server rejects it."""
    target = make_db("ünï")
    victims.open("target", pg.dsn(target))
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        handshake(sock, pg.user)
        sock.sendall(
            query_message("set client_encoding to 'LATIN1'")
            + query_message('CLEAN CONNECTION TO ALL FORCE FOR DATABASE "ünï"'.encode("latin-1"))
        )
        read_until_ready(sock)
        replies = read_until_ready(sock)
    errors = [error_fields(body) for kind, body in replies if kind == b"E"]
    assert [e["C"] for e in errors] == ["42601"]
    victims.assert_fate(set())


# --- replies: a huge NOTICE in the group of a CLEAN ---------------------------------------


def test_huge_notice_next_to_clean_passes_whole(proxy: ProxyProcess) -> None:
    size = 50_000_000
    with proxy.connect() as conn:
        notices: list[int] = []
        conn.add_notice_handler(lambda diag: notices.append(len(diag.message_primary or "")))
        cur = conn.execute(
            f"do $$ begin raise notice '%', repeat('x', {size}); end $$; "
            "CLEAN CONNECTION TO ALL TO USER pw_user"
        )
        assert cur.statusmessage == "DO" and cur.nextset()
        assert cur.statusmessage == "CLEAN CONNECTION"
        assert cur is not None
    assert notices == [size]


# --- named statements redefined by SQL ----------------------------------------------------


def _parse(name: bytes, sql: bytes) -> bytes:
    body = name + b"\0" + sql + b"\0" + b"\0\0"
    return b"P" + struct.pack("!I", len(body) + 4) + body


def _bind_execute_sync(name: bytes) -> bytes:
    bind = b"\0" + name + b"\0" + b"\0\0" + b"\0\0" + b"\0\0"
    execute = b"\0" + struct.pack("!I", 0)
    return (
        b"B"
        + struct.pack("!I", len(bind) + 4)
        + bind
        + b"E"
        + struct.pack("!I", len(execute) + 4)
        + execute
        + b"S\0\0\0\4"
    )


@pytest.mark.parametrize(
    "redefine",
    [
        ["DEALLOCATE s1; PREPARE s1 AS select 42"],
        ["deallocate all; prepare S1 as select 42"],
        ["DISCARD ALL", "PREPARE s1 AS select 42"],
    ],
)
def test_sql_redefinition_ends_the_tracking(
    proxy: ProxyProcess, pg: PgServer, redefine: str
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        handshake(sock, pg.user)
        sock.sendall(
            _parse(b"s1", b"CLEAN CONNECTION TO ALL FOR DATABASE nosuchdb_x") + b"S\0\0\0\4"
        )
        read_until_ready(sock)
        for text in redefine:
            sock.sendall(query_message(text))
            assert not [m for m in read_until_ready(sock) if m[0] == b"E"]
        sock.sendall(_bind_execute_sync(b"s1"))
        replies = read_until_ready(sock)
    rows = [body for kind, body in replies if kind == b"D"]
    tags = [body for kind, body in replies if kind == b"C"]
    assert rows == [b"\0\1\0\0\0\x0242"]
    assert tags == [b"SELECT 1\0"]
    assert "nosuchdb_x" not in proxy.log()
