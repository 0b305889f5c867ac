"""The cost of ``--metrics-listen``: the proxy's CPU per pgbench transaction with metrics
off and on, interleaved, printed as a table.

Run: ``.venv/bin/python bench/bench_metrics.py [--duration 10] [--rounds 5] [--clients 8]``

Three proxies of this checkout relay to one embedded PostgreSQL (or ``--upstream``): two
without metrics (``off`` and ``off2``, an A/A control: how far two identical proxies
differ on this machine), one with ``--metrics-listen`` whose endpoint is scraped every
second during its runs (far more often than Prometheus would), so the sampling and the
scrapes are in the measurement. Each round runs every workload against each, the order
rotating between rounds; a proxy's CPU time (user + system, all its threads, from /proc)
is divided by the transactions pgbench processed. The table gives medians over the rounds
and the differences in percent.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from _common import (
    ROOT,
    Target,
    cpu_seconds,
    find_program,
    free_port,
    postgres,
    proxy_from,
)

WORKLOADS: dict[str, list[str]] = {
    "select-only prepared": ["-S", "-M", "prepared"],
    "select-only simple": ["-S", "-M", "simple"],
    "tpc-b prepared": ["-M", "prepared"],
}
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pgbench(program: Path, target: Target, args: argparse.Namespace, extra: list[str]) -> str:
    cmd = [str(program), "-n", "-h", target.host, "-p", str(target.port), "-U", args.user]
    env = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [*cmd, *extra, args.dbname], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench via {target.name} failed:\n{result.stderr[-2000:]}")
    return result.stdout


class Scraper:
    """GETs ``url`` every ``interval`` seconds while running (as Prometheus would, often)."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with _OPENER.open(self.url, timeout=5) as response:
                response.read()
            self.scrapes += 1
            self._stop.wait(self.interval)


def run_once(
    program: Path, target: Target, workload: list[str], args: argparse.Namespace, url: str | None
) -> tuple[float, float]:
    """(tps, proxy CPU µs per transaction) of one pgbench run."""
    extra = [*workload, "-c", str(args.clients), "-j", str(args.jobs), "-T", str(args.duration)]
    assert target.pid is not None
    before = cpu_seconds(target.pid)
    with Scraper(url) if url else contextlib.nullcontext():
        out = pgbench(program, target, args, extra)
    used = cpu_seconds(target.pid) - before
    tps = float(_TPS.search(out).group(1))  # type: ignore[union-attr]
    processed = int(_PROCESSED.search(out).group(1))  # type: ignore[union-attr]
    return tps, 1e6 * used / processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run [10]")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds [5]")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c [8]")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench -j [2]")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale [10]")
    parser.add_argument("--upstream", help="HOST:PORT of an existing server [embedded]")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--dbname", default="postgres")
    args = parser.parse_args()
    program = find_program("pgbench")
    if program is None:
        raise SystemExit("pgbench not found")

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with postgres(args.upstream) as (direct, scratch), contextlib.ExitStack() as stack:
        print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
        pgbench(program, direct, args, ["-i", "-q", "-s", str(args.scale)])
        off = stack.enter_context(proxy_from(ROOT, direct, scratch)).target
        off2 = stack.enter_context(proxy_from(ROOT, direct, scratch)).target
        metrics_port = free_port()
        on = stack.enter_context(
            proxy_from(
                ROOT, direct, scratch, extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}")
            )
        ).target
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 15
        while True:  # the endpoint is up shortly after the proxy listens
            try:
                _OPENER.open(url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        targets = {"off": off, "on": on, "off2": off2}
        for target in targets.values():  # warm-up
            run_once(program, target, WORKLOADS["select-only prepared"], _short(args), None)
        for rnd in range(args.rounds):
            names = list(targets)
            order = names[rnd % 3 :] + names[: rnd % 3]
            for workload, flags in WORKLOADS.items():
                for name in order:
                    sample = run_once(
                        program, targets[name], flags, args, url if name == "on" else None
                    )
                    results.setdefault((workload, name), []).append(sample)
                    print(
                        f"round {rnd + 1} {workload:22} metrics {name:4}: "
                        f"{sample[0]:8.0f} tps {sample[1]:7.1f} µs/tx",
                        file=sys.stderr,
                    )
    report(results, args)


def _short(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "duration": 3})


def report(results: dict[tuple[str, str], list[tuple[float, float]]], args) -> None:  # type: ignore[no-untyped-def]
    print(
        f"\npgbench -c {args.clients} -j {args.jobs} -T {args.duration}, {args.rounds} "
        "interleaved rounds, medians; proxy CPU (user+system) per transaction\n"
    )
    print(
        "| workload | tps off | tps on | µs/tx off | µs/tx off2 | µs/tx on "
        "| on vs off | off2 vs off (A/A) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload in WORKLOADS:

        def med(name: str, index: int, workload: str = workload) -> float:
            return statistics.median(s[index] for s in results[(workload, name)])

        cpu_off, cpu_off2, cpu_on = med("off", 1), med("off2", 1), med("on", 1)
        print(
            f"| {workload} | {med('off', 0):.0f} | {med('on', 0):.0f} | {cpu_off:.1f} "
            f"| {cpu_off2:.1f} | {cpu_on:.1f} | {100 * (cpu_on - cpu_off) / cpu_off:+.1f} % "
            f"| {100 * (cpu_off2 - cpu_off) / cpu_off:+.1f} % |"
        )


if __name__ == "__main__":
    main()
