"""CLEAN CONNECTION cost: cleaning N idle sessions, and the hot-path price of the hooks.

Run: ``.venv/bin/python bench/bench_clean.py [--sizes 100 500] [--rounds 5]``
(``--upstream HOST:PORT`` for an existing server whose max_connections exceeds the largest
size + 20; by default a fresh embedded PostgreSQL with max_connections=700).

1. For each N, each round: open N idle sessions on a scratch database (asyncpg, concurrent,
   directly to the server), then time one of
   - ``proxy``: ``CLEAN CONNECTION TO ALL FORCE FOR DATABASE d`` through the proxy
     (psycopg, simple query); it returns once the sessions have exited;
   - ``direct``: the hand-written ``SELECT pg_terminate_backend(pid) FROM pg_stat_activity
     WHERE datname = 'd' AND pid <> pg_backend_pid()`` run directly, plus a client-side loop
     polling ``pg_stat_activity`` until they are gone (every ``--poll-ms``).
   The two alternate within a round, the order flipping every round. Medians are printed.
2. In-process microbenchmark of :meth:`proxy.streams.FrontendStream.feed` over 10,000
   pgbench-like messages (``-M simple``: Query; ``-M extended``: Parse/Bind/Describe/
   Execute/Sync; ``-M prepared``: Bind/Execute/Sync), fed one transaction per call as the
   proxy reads them, with the CLEAN CONNECTION hooks enabled vs disabled. The pgbench TPS
   comparison through the proxy vs direct is bench/bench_pgbench.py's job.

No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import psycopg
from _common import Target, postgres, proxy, raise_nofile

from proxy.clean import CleanConnectionDialect
from proxy.streams import FrontendStream, SessionState
from proxy.wire import message

DB = "bench_clean"
HAND_WRITTEN = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    f"WHERE datname = '{DB}' AND pid <> pg_backend_pid()"
)
REMAINING = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"


# --- 1. cleaning N idle sessions ----------------------------------------------------------


def remaining(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(REMAINING, (DB,)).fetchone()[0]


async def open_victims(server: Target, user: str, n: int) -> list[asyncpg.Connection]:
    limit = asyncio.Semaphore(64)

    async def one() -> asyncpg.Connection:
        async with limit:
            return await asyncpg.connect(
                host=server.host, port=server.port, user=user, database=DB, ssl=False
            )

    return list(await asyncio.gather(*(one() for _ in range(n))))


def wait_idle(admin: psycopg.Connection, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        idle = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'idle'", (DB,)
        ).fetchone()[0]
        if idle == n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {idle} of {n} victims idle after {timeout} s")
        time.sleep(0.01)


def clean_via_proxy(conn: psycopg.Connection) -> float:
    start = time.perf_counter()
    cur = conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {DB}")
    elapsed = time.perf_counter() - start
    if cur.statusmessage != "CLEAN CONNECTION":
        raise RuntimeError(f"unexpected tag {cur.statusmessage!r}")
    return elapsed


def clean_by_hand(conn: psycopg.Connection, poll: float) -> float:
    start = time.perf_counter()
    conn.execute(HAND_WRITTEN)
    while remaining(conn):
        time.sleep(poll)
    return time.perf_counter() - start


async def measure_cleaning(
    server: Target, via: Target, user: str, sizes: list[int], rounds: int, poll: float
) -> dict[tuple[int, str], list[float]]:
    samples: dict[tuple[int, str], list[float]] = {}
    admin = psycopg.connect(server.dsn("postgres", user), autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    through_proxy = psycopg.connect(via.dsn("postgres", user), autocommit=True)
    direct = psycopg.connect(server.dsn("postgres", user), autocommit=True)
    try:
        for round_ in range(rounds):
            for n in sizes:
                methods = ["proxy", "direct"] if round_ % 2 == 0 else ["direct", "proxy"]
                for method in methods:
                    victims = await open_victims(server, user, n)
                    wait_idle(admin, n)
                    if method == "proxy":
                        elapsed = clean_via_proxy(through_proxy)
                    else:
                        elapsed = clean_by_hand(direct, poll)
                    left = remaining(admin)
                    if left:
                        raise RuntimeError(f"{method}: {left} sessions left after cleaning")
                    for victim in victims:
                        victim.terminate()
                    samples.setdefault((n, method), []).append(elapsed)
                    print(
                        f"  round {round_ + 1} n={n} {method}: {elapsed * 1000:.1f} ms",
                        file=sys.stderr,
                    )
    finally:
        through_proxy.close()
        direct.close()
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.close()
    return samples


def print_cleaning(samples: dict[tuple[int, str], list[float]], sizes: list[int]) -> None:
    print("\nCLEAN CONNECTION TO ALL FORCE vs hand-written pg_terminate_backend + wait loop")
    print(
        f"{'n':>5} | {'proxy CLEAN median ms':>21} | {'direct hand-written median ms':>29} | ratio"
    )
    print(f"{'-' * 5}-+-{'-' * 21}-+-{'-' * 29}-+------")
    for n in sizes:
        ours = statistics.median(samples[(n, "proxy")]) * 1000
        theirs = statistics.median(samples[(n, "direct")]) * 1000
        print(f"{n:>5} | {ours:>21.1f} | {theirs:>29.1f} | {ours / theirs:.2f}")


# --- 2. FrontendStream.feed with and without the hooks ----------------------------------

MESSAGES = 10_000


def pgbench_transactions(mode: str) -> list[bytes]:
    """One bytes object per transaction, as pgbench -S sends them; 10,000 messages total."""
    transactions: list[bytes] = []
    count = 0
    aid = 1
    while count < MESSAGES:
        aid = aid * 7919 % 100_000 + 1
        if mode == "simple":
            sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
            parts = [message(b"Q", sql.encode() + b"\0")]
        else:
            value = str(aid).encode()
            bind = message(
                b"B",
                b"\0"  # unnamed portal
                + (b"P0_1\0" if mode == "prepared" else b"\0")
                + b"\0\0"  # no parameter format codes
                + b"\0\1"
                + len(value).to_bytes(4, "big")
                + value
                + b"\0\0",  # result formats: default
            )
            execute = message(b"E", b"\0\0\0\0\0")
            sync = message(b"S", b"")
            if mode == "prepared":
                parts = [bind, execute, sync]
            else:
                parse = message(
                    b"P",
                    b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0"
                    + b"\0\1\0\0\0\x17",  # one parameter, int4
                )
                describe = message(b"D", b"P\0")
                parts = [parse, bind, describe, execute, sync]
        transactions.append(b"".join(parts))
        count += len(parts)
    return transactions


def count_messages(transactions: list[bytes]) -> int:
    messages = 0
    for data in transactions:
        pos = 0
        while pos < len(data):
            pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
            messages += 1
    return messages


def new_stream(hooks: bool) -> FrontendStream:
    """A logged-in session's frontend stream, with or without the CLEAN dialect."""
    state = SessionState()
    state.authenticated = state.ready = True
    state.answering_group = 0
    dialect = CleanConnectionDialect(15.0) if hooks else None
    return FrontendStream(state, max_message_size=1 << 30, dialect=dialect)


def feed_once(transactions: list[bytes], hooks: bool) -> int:
    feed = new_stream(hooks).feed
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for data in transactions:
            feed(data)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def print_feed(repeat: int) -> None:
    print(f"\nFrontendStream.feed, {MESSAGES:,} pgbench -S messages, best of {repeat}")
    print(f"{'pgbench mode':<13} | {'hooks on ns/msg':>15} | {'hooks off ns/msg':>16} | ratio")
    print(f"{'-' * 13}-+-{'-' * 15}-+-{'-' * 16}-+------")
    for mode in ("simple", "extended", "prepared"):
        transactions = pgbench_transactions(mode)
        messages = count_messages(transactions)
        on, off = [], []
        for _ in range(repeat):  # interleaved, so that drift hits both alike
            on.append(feed_once(transactions, True))
            off.append(feed_once(transactions, False))
        best_on, best_off = min(on) / messages, min(off) / messages
        print(f"{mode:<13} | {best_on:>15.0f} | {best_off:>16.0f} | {best_on / best_off:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", help="HOST:PORT of an existing server (default: embedded)")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-ms", type=float, default=10.0, help="hand-written wait loop")
    parser.add_argument("--feed-repeat", type=int, default=50)
    parser.add_argument("--skip-clean", action="store_true", help="only the feed benchmark")
    args = parser.parse_args()

    if not args.skip_clean:
        raise_nofile(max(args.sizes) * 2 + 256)
        settings = {"max_connections": str(max(700, max(args.sizes) + 100))}
        with postgres(args.upstream, settings) as (server, scratch), proxy(server, scratch) as via:
            samples = asyncio.run(
                measure_cleaning(
                    server, via, args.user, args.sizes, args.rounds, args.poll_ms / 1000
                )
            )
        print_cleaning(samples, args.sizes)
    print_feed(args.feed_repeat)


if __name__ == "__main__":
    main()
