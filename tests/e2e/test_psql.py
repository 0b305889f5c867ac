"""psql and pgbench as subprocesses: through the proxy they must behave exactly as they do
against the server directly."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, ProxyProcess

PSQL = shutil.which("psql")
PGBENCH = shutil.which("pgbench")

pytestmark = pytest.mark.skipif(PSQL is None, reason="psql is not installed")

SCRIPT = r"""
\set ON_ERROR_STOP off
\set n 5
drop table if exists psql_t;
create table psql_t (id int primary key, name text not null default 'x', note varchar(20));
create index psql_t_name on psql_t (name);
comment on table psql_t is 'through the proxy';
insert into psql_t (id, name) select g, 'n' || g from generate_series(1, :n) g;
copy psql_t (id, name, note) from stdin;
100	hundred	\N
101	tab\there	note
102	"quoted"	ünïcødé
\.
\copy psql_t (id, name, note) from '{datafile}'
select * from psql_t order by id;
select :n * 2 as doubled, :'n' as quoted;
select 1/0;
select 'after the error' as still_running;
select * from no_such_table;
begin;
insert into psql_t values (200, 'in tx');
savepoint s;
insert into psql_t values (200, 'duplicate');
rollback to s;
select 1 as in_aborted_then_restored;
commit;
begin;
select 1/0;
select 'ignored';
rollback;
select count(*) from psql_t;
\d psql_t
\dt+ psql_t
\copy (select id, name from psql_t order by id limit 3) to stdout
copy (select id, note from psql_t where note is not null order by id) to stdout with csv header;
do $$ begin raise notice 'notice %', 42; raise warning 'careful'; end $$;
select repeat('y', 10) as ys \gset
\echo :ys
\x on
select 1 as a, 'two' as b;
\x off
select 'a' as first; select 'b' as second;
prepare p(int) as select $1 + 1 as next;
execute p(41);
deallocate p;
select x from generate_series(1, 3) x \g
\if :{?ys}
\echo ys is set
\endif
drop table psql_t;
"""


def psql_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", PGCLIENTENCODING="UTF8", PGTZ="UTC")
    return env


def run_psql(
    host: str, port: int, user: str, *args: str, stdin: str | None = None
) -> tuple[int, str]:
    """psql's exit status and its stdout+stderr, with the port normalised."""
    result = subprocess.run(
        [PSQL or "psql", "-X", "-h", host, "-p", str(port), "-U", user, "-d", "postgres", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=psql_env(),
        timeout=60,
    )
    output = (result.stdout + "\n--- stderr ---\n" + result.stderr).replace(str(port), "PORT")
    return result.returncode, output


def test_psql_script_identical(proxy: ProxyProcess, pg: PgServer, tmp_path: Path) -> None:
    datafile = tmp_path / "rows.tsv"
    datafile.write_text("300\tfrom file\tf1\n301\tfrom file\t\\N\n")
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT.replace("{datafile}", str(datafile)))
    direct = run_psql(pg.host, pg.port, pg.user, "-f", str(script))
    proxied = run_psql(proxy.host, proxy.port, pg.user, "-f", str(script))
    assert proxied == direct
    # The script did what it says, so the comparison compared something.
    status, output = direct
    assert status == 0
    assert "division by zero" in output and "ünïcødé" in output
    assert 'Table "public.psql_t"' in output
    assert "after the error" in output and "yyyyyyyyyy" in output
    assert "NOTICE:  notice 42" in output


def test_psql_on_error_stop(proxy: ProxyProcess, pg: PgServer) -> None:
    args = ("-v", "ON_ERROR_STOP=1", "-c", "select 1", "-c", "select 1/0", "-c", "select 3")
    direct = run_psql(pg.host, pg.port, pg.user, *args)
    proxied = run_psql(proxy.host, proxy.port, pg.user, *args)
    assert proxied == direct
    assert direct[0] == 1


def test_psql_command_and_stdin(proxy: ProxyProcess, pg: PgServer) -> None:
    command = ("-c", "select 1 as one; select 'two' as two", "-c", r"\dn public")
    assert run_psql(proxy.host, proxy.port, pg.user, *command) == run_psql(
        pg.host, pg.port, pg.user, *command
    )
    stdin = "select 42 as answer;\n\\echo from stdin\nselect current_user;\n"
    proxied = run_psql(proxy.host, proxy.port, pg.user, stdin=stdin)
    assert proxied == run_psql(pg.host, pg.port, pg.user, stdin=stdin)
    assert proxied[0] == 0 and "42" in proxied[1] and "from stdin" in proxied[1]


@pytest.fixture
def pgbench_tables(pg: PgServer) -> Iterator[None]:
    yield
    with pg.connect() as conn:
        for table in ("accounts", "branches", "history", "tellers"):
            conn.execute(f"drop table if exists pgbench_{table}")


@pytest.mark.skipif(PGBENCH is None, reason="pgbench is not installed")
def test_pgbench(proxy: ProxyProcess, pg: PgServer, pgbench_tables: None) -> None:
    base = [PGBENCH or "pgbench", "-h", proxy.host, "-p", str(proxy.port), "-U", pg.user]

    def pgbench(*args: str) -> str:
        result = subprocess.run(
            [*base, *args, "postgres"],
            capture_output=True,
            text=True,
            env=psql_env(),
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    pgbench("-i", "-s", "1", "-q")
    for mode in ("extended", "prepared"):
        output = pgbench("-T", "2", "-c", "4", "-M", mode, "-n")
        assert f"query mode: {mode}" in output
        assert "number of failed transactions: 0" in output or "failed" not in output
    with psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("select count(*) from pgbench_branches").fetchone() == (1,)
