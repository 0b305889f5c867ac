"""Real clients through the proxy: psycopg in every protocol mode, asyncpg, COPY, NOTIFY."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import psycopg
import pytest

from tests.conftest import AUTH_ROLES, ProxyProcess


def test_simple_query(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)
        cur = conn.execute("select g, repeat('x', g) from generate_series(1, 300) g")
        rows = cur.fetchall()
        assert len(rows) == 300 and rows[-1] == (300, "x" * 300)


def test_simple_multi_statement(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("select 1; select 'two'; create temp table t(a int); insert into t values (1)")
        tags = [cur.statusmessage]
        while cur.nextset():
            tags.append(cur.statusmessage)
        assert tags == ["SELECT 1", "SELECT 1", "CREATE TABLE", "INSERT 0 1"]


def test_extended_prepared(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        for i in range(10):
            row = conn.execute(
                "select %s::int * 2, %s::text", (i, f"v{i}"), prepare=True
            ).fetchone()
            assert row == (i * 2, f"v{i}")


def test_pipeline_mode(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn, conn.pipeline():
        cursors = [conn.execute("select %s::int", (i,)) for i in range(50)]
    assert [cur.fetchone()[0] for cur in cursors] == list(range(50))


def test_errors_pass_through_and_session_survives(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            conn.execute("select * from no_such_table")
        assert info.value.diag.statement_position == "15"
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def test_notices_and_listen_notify(proxy: ProxyProcess) -> None:
    with proxy.connect() as listener, proxy.connect() as notifier:
        notices: list[str] = []
        listener.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        listener.execute("do $$ begin raise notice 'hello %', 42; end $$")
        assert notices == ["hello 42"]
        listener.execute("listen chan")
        notifier.execute("notify chan, 'payload'")
        got = next(listener.notifies(timeout=10))
        assert (got.channel, got.payload) == ("chan", "payload")


def test_startup_parameters_reach_server(proxy: ProxyProcess) -> None:
    dsn = proxy.dsn(application_name="my app", options="-c search_path=abc -c work_mem=7MB")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select current_setting('application_name'), current_setting('search_path'),"
            " current_setting('work_mem')"
        ).fetchone()
        assert row == ("my app", "abc", "7MB")


@pytest.mark.parametrize("role", sorted(AUTH_ROLES))
def test_password_authentication_methods(proxy: ProxyProcess, role: str) -> None:
    password, _ = AUTH_ROLES[role]
    with psycopg.connect(proxy.dsn(user=role, password=password)) as conn:
        assert conn.execute("select current_user").fetchone() == (role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn(user=role, password="wrong"))


def test_copy_both_ways_50mb_checksum(proxy: ProxyProcess) -> None:
    line = b"%08d\t" + b"y" * 90 + b"\n"
    rows = 520_000  # 100 bytes a row: 52 MB each way
    sent = hashlib.sha256()
    with proxy.connect() as conn:
        conn.execute("create temp table big(n text, s text)")
        with conn.cursor().copy("copy big from stdin") as copy:
            batch = []
            for i in range(rows):
                data = line % i
                sent.update(data)
                batch.append(data)
                if len(batch) == 5000:
                    copy.write(b"".join(batch))
                    batch.clear()
            copy.write(b"".join(batch))
        assert conn.execute("select count(*) from big").fetchone() == (rows,)
        received = hashlib.sha256()
        with conn.cursor().copy("copy big to stdout") as copy:
            for chunk in copy:
                received.update(chunk)
        assert received.hexdigest() == sent.hexdigest()


def test_cancel_request(proxy: ProxyProcess) -> None:
    with proxy.connect() as conn:
        import threading

        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        assert conn.execute("select 1").fetchone() == (1,)


async def test_asyncpg_extended_protocol(proxy: ProxyProcess) -> None:
    conn = await asyncpg.connect(
        host=proxy.host, port=proxy.port, user=proxy.upstream.user, database="postgres"
    )
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
        stmt = await conn.prepare("select g from generate_series(1, $1::int) g")
        assert [r[0] for r in await stmt.fetch(100)] == list(range(1, 101))
        async with conn.transaction():
            await conn.execute("create temp table a(x int)")
            await conn.executemany("insert into a values ($1)", [(i,) for i in range(100)])
            assert await conn.fetchval("select sum(x) from a") == 4950
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("select * from nope")
        assert await conn.fetchval("select 'ok'") == "ok"
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetch("select pg_sleep(30)", timeout=0.3)  # cancels via CancelRequest
        assert await conn.fetchval("select 2") == 2
    finally:
        await conn.close()


async def test_200_concurrent_clients(proxy: ProxyProcess) -> None:
    async def client(i: int) -> list[int]:
        conn = await asyncpg.connect(
            host=proxy.host, port=proxy.port, user=proxy.upstream.user, database="postgres"
        )
        try:
            results = []
            for j in range(5):
                results.append(await conn.fetchval("select $1::int * 1000 + $2::int", i, j))
            return results
        finally:
            await conn.close()

    results = await asyncio.gather(*(client(i) for i in range(200)))
    assert results == [[i * 1000 + j for j in range(5)] for i in range(200)]
