"""Hot-path cost per transaction: a pgbench-like byte trace replayed through the streams.

Run: ``.venv/bin/python bench/bench_hotpath.py [--proxy-src DIR ...] [--transactions 20000]
[--repeat 7] [--no-callgrind]``

What is measured: the CPU the sans-IO session streams (:class:`proxy.streams.FrontendStream`
for client → server bytes, :class:`proxy.streams.BackendStream` for server → client bytes)
spend per pgbench transaction, with no sockets and no event loop. For each workload a trace
is built once: the bytes libpq/pgbench send for each protocol round trip (one read) and the
bytes PostgreSQL answers (one read), exactly as they appear on the wire:

* ``select-only simple``: Query; RowDescription, DataRow, CommandComplete, ReadyForQuery;
* ``select-only extended``: Parse/Bind/Describe/Execute/Sync (``PQsendQueryParams``);
  ParseComplete, BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery;
* ``select-only prepared``: Bind/Describe/Execute/Sync (``PQsendQueryPrepared``) after one
  Parse/Sync per statement at the start (not timed); BindComplete, RowDescription, ...;
* ``tpc-b prepared``: pgbench's built-in TPC-B-like script, seven round trips per
  transaction (BEGIN, 3 UPDATEs, SELECT, INSERT, END), prepared as above;
* ``tpc-b simple``: the same seven statements as Query messages.

The streams come from :func:`_make_streams` (the only place that knows how a session builds
them): a ``Session`` with the CLEAN CONNECTION dialect attached, a StartupMessage, and the
server's login replies (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery)
fed to the backend stream, as a real session would see them. Then the replay alternates
``frontend.feed(request)`` and ``backend.feed(reply)`` for each round trip.

Two measures, each in a fresh subprocess that imports the proxy from ``--proxy-src``
(default: this checkout), so that several source trees can be compared with one command:

1. ``ns/tx``: wall time of replaying ``--transactions`` transactions with gc disabled, best of
   ``--repeat`` runs (``timeit``'s method). Noisy on a shared machine; compare runs made back
   to back.
2. ``Ir/tx`` (when ``valgrind`` is on PATH): instructions counted by ``valgrind
   --tool=callgrind``. The worker is run twice, replaying N1 and N2 transactions of the same
   pre-built trace (both runs build the same N2-transaction trace and import the same
   modules), and ``(Ir(N2) - Ir(N1)) / (N2 - N1)`` is reported: interpreter start-up, imports
   and trace construction cancel out. Deterministic to a fraction of a percent
   (``PYTHONHASHSEED=0``, gc disabled during the replay). The ``harness`` row replays the
   same trace through identity feeds (``lambda data: [data]``): the cost of the replay loop
   itself, which every proxy row includes; subtract it to get the streams' own share.

No assertions: this prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent

WORKLOADS = (
    "select-only simple",
    "select-only extended",
    "select-only prepared",
    "tpc-b prepared",
    "tpc-b simple",
)

Trip = tuple[bytes, bytes]  # (client → server read, server → client read) of one round trip
Feed = Callable[[bytes], list[bytes]]


# --- wire bytes (built here, independent of the proxy sources under test) -------------


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _startup(user: str, database: str) -> bytes:
    body = struct.pack("!I", 3 << 16)
    for key, value in (("user", user), ("database", database), ("application_name", "pgbench")):
        body += _cstr(key) + _cstr(value)
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _login_replies() -> bytes:
    """What PostgreSQL 18 sends after a trust StartupMessage (AuthenticationOk ... 'Z')."""
    params = {
        "application_name": "pgbench",
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "default_transaction_read_only": "off",
        "in_hot_standby": "off",
        "integer_datetimes": "on",
        "IntervalStyle": "postgres",
        "is_superuser": "on",
        "scram_iterations": "4096",
        "search_path": '"$user", public',
        "server_encoding": "UTF8",
        "server_version": "18.1",
        "session_authorization": "postgres",
        "standard_conforming_strings": "on",
        "TimeZone": "UTC",
    }
    out = _msg(b"R", struct.pack("!I", 0))
    for name, value in params.items():
        out += _msg(b"S", _cstr(name) + _cstr(value))
    out += _msg(b"K", struct.pack("!II", 4242, 0x5EED1234))
    return out + _msg(b"Z", b"I")


def _row_description(column: str, table_oid: int, attnum: int) -> bytes:
    field = _cstr(column) + struct.pack("!IhIhih", table_oid, attnum, 23, 4, -1, 0)
    return _msg(b"T", struct.pack("!h", 1) + field)


def _data_row(value: int) -> bytes:
    text = str(value).encode()
    return _msg(b"D", struct.pack("!hI", 1, len(text)) + text)


def _complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def _ready(status: bytes) -> bytes:
    return _msg(b"Z", status)


PARSE_COMPLETE = _msg(b"1", b"")
BIND_COMPLETE = _msg(b"2", b"")
NO_DATA = _msg(b"n", b"")
SYNC = _msg(b"S", b"")
ABALANCE = _row_description("abalance", 16397, 3)


def _parse(name: str, sql: str) -> bytes:
    return _msg(b"P", _cstr(name) + _cstr(sql) + struct.pack("!h", 0))


def _bind(statement: str, params: list[int]) -> bytes:
    """libpq's Bind: unnamed portal, no parameter formats, text values, one result format."""
    body = b"\0" + _cstr(statement) + struct.pack("!hh", 0, len(params))
    for value in params:
        text = str(value).encode()
        body += struct.pack("!I", len(text)) + text
    return _msg(b"B", body + struct.pack("!hh", 1, 0))


DESCRIBE_PORTAL = _msg(b"D", b"P\0")
EXECUTE = _msg(b"E", b"\0" + struct.pack("!I", 0))


def _query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


SELECT_ONLY = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"

# pgbench's built-in tpcb-like script: (sql with $n, parameter names, reply after the
# result rows: tag, ReadyForQuery status).
TPCB = (
    ("BEGIN;", (), "BEGIN", b"T"),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
        ("delta", "aid"),
        "UPDATE 1",
        b"T",
    ),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", ("aid",), "SELECT 1", b"T"),
    (
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
        ("delta", "tid"),
        "UPDATE 1",
        b"T",
    ),
    (
        "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
        ("delta", "bid"),
        "UPDATE 1",
        b"T",
    ),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        ("tid", "bid", "aid", "delta"),
        "INSERT 0 1",
        b"T",
    ),
    ("END;", (), "COMMIT", b"I"),
)


def _inline(sql: str, params: tuple[str, ...], values: dict[str, int]) -> str:
    """pgbench -M simple substitutes the variables into the text."""
    for index in range(len(params), 0, -1):
        sql = sql.replace(f"${index}", str(values[params[index - 1]]))
    return sql


class _Rng:
    """A tiny LCG: the same trace for every source tree and Python version."""

    def __init__(self, seed: int) -> None:
        self.state = seed

    def below(self, n: int) -> int:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return (self.state >> 33) % n


def build_trace(workload: str, transactions: int, scale: int = 10) -> tuple[list[Trip], list[Trip]]:
    """(setup trips, timed trips): the setup is fed once, untimed (prepares statements)."""
    rng = _Rng(12345)
    setup: list[Trip] = []
    trips: list[Trip] = []
    if workload.endswith("prepared"):
        statements = [SELECT_ONLY] if workload.startswith("select") else [s[0] for s in TPCB]
        for index, sql in enumerate(statements):
            setup.append((_parse(f"P0_{index}", sql) + SYNC, PARSE_COMPLETE + _ready(b"I")))
    for _ in range(transactions):
        values = {
            "aid": rng.below(100_000 * scale) + 1,
            "bid": rng.below(scale) + 1,
            "tid": rng.below(10 * scale) + 1,
            "delta": rng.below(10_001) - 5000,
        }
        balance = rng.below(200_001) - 100_000
        if workload.startswith("select"):
            reply = ABALANCE + _data_row(balance) + _complete("SELECT 1") + _ready(b"I")
            if workload.endswith("simple"):
                request = _query(SELECT_ONLY.replace("$1", str(values["aid"])))
            elif workload.endswith("extended"):
                request = _parse("", SELECT_ONLY) + _bind("", [values["aid"]])
                request += DESCRIBE_PORTAL + EXECUTE + SYNC
                reply = PARSE_COMPLETE + BIND_COMPLETE + reply
            else:
                request = _bind("P0_0", [values["aid"]]) + DESCRIBE_PORTAL + EXECUTE + SYNC
                reply = BIND_COMPLETE + reply
            trips.append((request, reply))
            continue
        for index, (sql, params, tag, status) in enumerate(TPCB):
            rows = ABALANCE + _data_row(balance) if tag == "SELECT 1" else b""
            done = _complete(tag) + _ready(status)
            if workload.endswith("simple"):
                trips.append((_query(_inline(sql, params, values)), rows + done))
            else:
                request = _bind(f"P0_{index}", [values[p] for p in params])
                request += DESCRIBE_PORTAL + EXECUTE + SYNC
                trips.append((request, BIND_COMPLETE + (rows or NO_DATA) + done))
    return setup, trips


def trips_per_transaction(workload: str) -> int:
    return 7 if workload.startswith("tpc-b") else 1


# --- the streams under test -----------------------------------------------------------


def _make_streams() -> tuple[Feed, Feed]:
    """The frontend and backend ``feed`` of a session past login, built as the proxy does.

    The one place that knows the construction API, in both of its forms: the session holds
    the dialect (``Session(..., dialect=...)``, since the hostile-input fix), or the dialect
    attaches its hooks to the session (before it).
    """
    from proxy.clean import CleanConnectionDialect
    from proxy.session import Session
    from proxy.wire import StartupKind, StartupPacket

    address, limit = "127.0.0.1:5555", 0x3FFFFFFF
    if "dialect" in {f.name for f in dataclasses.fields(Session)}:
        session = Session(
            client_address=address, max_message_size=limit, dialect=CleanConnectionDialect()
        )
    else:
        session = Session(client_address=address, max_message_size=limit)
        dialect = CleanConnectionDialect()
        dialect.attach(session)  # type: ignore[attr-defined]
        session.might_rewrite = dialect.might_rewrite  # type: ignore[attr-defined]
    session.on_startup_packet(StartupPacket(StartupKind.STARTUP, _startup("postgres", "bench")))
    frontend, backend = session.frontend, session.backend
    assert frontend is not None and backend is not None
    backend.feed(_login_replies())
    return frontend.feed, backend.feed


def _identity_streams() -> tuple[Feed, Feed]:
    def identity(data: bytes) -> list[bytes]:
        return [data]

    return identity, identity


def replay(trips: list[Trip], count: int, frontend: Feed, backend: Feed) -> None:
    """Feed the first ``count`` round trips: request to the frontend, reply to the backend."""
    for request, reply in trips[:count] if count < len(trips) else trips:
        frontend(request)
        backend(reply)


def _prepared(workload: str, harness: bool, transactions: int) -> tuple[list[Trip], Feed, Feed]:
    setup, trips = build_trace(workload, transactions)
    frontend, backend = _identity_streams() if harness else _make_streams()
    replay(setup, len(setup), frontend, backend)
    return trips, frontend, backend


# --- worker (runs in a subprocess, possibly under callgrind) ---------------------------


def _check_pass_through(workload: str, harness: bool) -> None:
    """The trace holds no CLEAN CONNECTION: every read must come out unchanged."""
    trips, frontend, backend = _prepared(workload, harness, 50)
    for request, reply in trips:
        if b"".join(frontend(request)) != request or b"".join(backend(reply)) != reply:
            raise RuntimeError(f"{workload}: the streams changed pass-through bytes")


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.src)
    import proxy

    workload, harness = args.workload, args.harness
    per_tx = trips_per_transaction(workload)
    result: dict[str, object] = {"proxy": proxy.__file__}
    if args.worker == "time":
        _check_pass_through(workload, harness)
        best = None
        for _ in range(args.repeat):
            trips, frontend, backend = _prepared(workload, harness, args.transactions)
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter_ns()
                replay(trips, len(trips), frontend, backend)
                elapsed = time.perf_counter_ns() - start
            finally:
                gc.enable()
            best = elapsed if best is None else min(best, elapsed)
        result["ns_per_tx"] = best / args.transactions  # type: ignore[operator]
        sample = build_trace(workload, 100)[1]
        result["bytes_per_tx"] = sum(len(a) + len(b) for a, b in sample) / 100
    else:  # "count": the trace is always built for --trace-transactions; replay the first N
        trips, frontend, backend = _prepared(workload, harness, args.trace_transactions)
        gc.collect()
        gc.disable()
        replay(trips, args.transactions * per_tx, frontend, backend)
    print(json.dumps(result))


# --- driver ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One workload measured with one source tree (per transaction)."""

    workload: str
    src: str
    bytes_per_tx: float
    ns: float
    harness_ns: float
    ir: float | None
    harness_ir: float | None

    @property
    def streams_ir(self) -> float | None:
        if self.ir is None or self.harness_ir is None:
            return None
        return self.ir - self.harness_ir


def _worker_command(
    src: str, workload: str, mode: str, transactions: int, *, harness: bool, extra: list[str]
) -> list[str]:
    command = [
        sys.executable,
        str(HERE),
        "--worker",
        mode,
        "--src",
        src,
        "--workload",
        workload,
        "--transactions",
        str(transactions),
        *extra,
    ]
    return [*command, "--harness"] if harness else command


def _env(src: str) -> dict[str, str]:
    return dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=src)


def _run_worker(command: list[str], src: str, prefix: list[str] | None = None) -> tuple[dict, str]:
    done = subprocess.run(
        [*(prefix or []), *command],
        cwd=src,
        env=_env(src),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not str(result["proxy"]).startswith(str(Path(src).resolve())):
        raise RuntimeError(f"worker imported {result['proxy']}, not from {src}")
    return result, done.stderr


def time_workload(src: str, workload: str, transactions: int, repeat: int, harness: bool) -> dict:
    command = _worker_command(
        src, workload, "time", transactions, harness=harness, extra=["--repeat", str(repeat)]
    )
    return _run_worker(command, src)[0]


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(src: str, workload: str, n1: int, n2: int, harness: bool) -> float:
    """(Ir(n2) - Ir(n1)) / (n2 - n1) under callgrind: instructions per transaction."""
    counts = []
    with tempfile.TemporaryDirectory(prefix="pgdp-callgrind-") as scratch:
        for n in (n1, n2):
            command = _worker_command(
                src, workload, "count", n, harness=harness, extra=["--trace-transactions", str(n2)]
            )
            prefix = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/callgrind.out.%p",
            ]
            _, stderr = _run_worker(command, src, prefix)
            match = _COLLECTED.search(stderr)
            if match is None:
                raise RuntimeError(f"no instruction count in callgrind output:\n{stderr[-2000:]}")
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / (n2 - n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--proxy-src",
        nargs="+",
        default=[str(ROOT)],
        metavar="DIR",
        help="source trees to import the proxy from (default: this checkout)",
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--transactions", type=int, default=20_000, help="timed replay [20000]")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs, best kept [7]")
    parser.add_argument("--callgrind-n", type=int, nargs=2, default=[500, 2500], metavar="N")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--worker", choices=["time", "count"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--harness", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace-transactions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sources = [str(Path(src).resolve()) for src in args.proxy_src]
    callgrind = not args.no_callgrind and shutil.which("valgrind") is not None
    if not args.no_callgrind and not callgrind:
        print("valgrind not on PATH: Ir/tx column skipped", file=sys.stderr)
    n1, n2 = args.callgrind_n
    rows: list[Row] = []
    for workload in args.workloads:
        harness_ns = time_workload(sources[0], workload, args.transactions, args.repeat, True)
        harness_ir = instructions(sources[0], workload, n1, n2, True) if callgrind else None
        # Interleave the source trees so that drift on a shared machine hits them alike.
        for src in sources:
            timed = time_workload(src, workload, args.transactions, args.repeat, False)
            ir = instructions(src, workload, n1, n2, False) if callgrind else None
            row = Row(
                workload,
                src,
                timed["bytes_per_tx"],
                timed["ns_per_tx"],
                harness_ns["ns_per_tx"],
                ir,
                harness_ir,
            )
            rows.append(row)
            print(
                f"  {workload} / {src}: {row.ns:.0f} ns/tx, Ir/tx {_num(ir)}",
                file=sys.stderr,
                flush=True,
            )
    print_table(rows, sources, args)


def print_table(rows: list[Row], sources: list[str], args: argparse.Namespace) -> None:
    n1, n2 = args.callgrind_n
    print()
    print(
        f"Streams hot path, pgbench-like trace. ns/tx: best of {args.repeat} x "
        f"{args.transactions} transactions (wall clock, noisy). Ir/tx: callgrind "
        f"(Ir({n2}) - Ir({n1})) / {n2 - n1} (deterministic). harness: the same replay through "
        "identity feeds; streams = total - harness."
    )
    print()
    print(
        "| workload | source | bytes/tx | ns/tx | harness ns/tx | streams ns/tx "
        "| Ir/tx | harness Ir/tx | streams Ir/tx | streams Ir vs first source |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base: dict[str, float | None] = {}
    for row in rows:
        streams_ir = row.streams_ir
        if row.src == sources[0]:
            base[row.workload] = streams_ir
            versus = "-"
        else:
            first = base.get(row.workload)
            versus = f"{streams_ir / first - 1:+.2%}" if streams_ir and first else "-"
        print(
            f"| {row.workload} | {row.src} | {row.bytes_per_tx:.0f} | {row.ns:.0f} "
            f"| {row.harness_ns:.0f} | {row.ns - row.harness_ns:.0f} | {_num(row.ir)} "
            f"| {_num(row.harness_ir)} | {_num(streams_ir)} | {versus} |"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
