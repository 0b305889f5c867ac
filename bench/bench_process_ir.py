"""Instructions per pgbench transaction of a whole middlebox process: pump vs proxy builds.

Run: ``.venv/bin/python bench/bench_process_ir.py [--clients 1] [--modes prepared simple]
[--transactions 200 1200] [--proxy-src DIR ...]`` (needs ``valgrind`` and ``pgbench``).

CPU seconds per transaction (``bench_pgbench.py``) are what users pay, but on a shared
2-core machine two runs of the same binary differ by 5-10 %. This counts instead the
user-space instructions (``valgrind --tool=callgrind``) that the middlebox process executes
per transaction, which repeat to a fraction of a percent. Each target runs twice under
callgrind, serving ``pgbench -t N1`` then ``-t N2`` transactions per client, and
``(Ir(N2) - Ir(N1)) / (clients * (N2 - N1))`` is reported: start-up, imports, connects and
shutdown cancel out. Kernel work (the read/write system calls, the same for every target)
is not counted, so the ratios here are upper bounds of the CPU ratios.

Targets: the blind byte pump (``bench/pump.py``), the proxy of this checkout with its
compiled hot path (when built) and with ``PGDP_PURE_PYTHON=1``, the proxy of each
``--proxy-src`` tree; with ``--buffered-pump`` also the pump as an
``asyncio.BufferedProtocol`` (``pump buffered``), and with ``--metrics`` the proxy with
``--metrics-listen`` whose ``/metrics`` is scraped once a second while pgbench runs
(``proxy+metrics``). Under callgrind the proxy runs some 50 times slower, so its
once-a-second sampling and the scrapes weigh about 50 times more per transaction than at
full speed: the metrics row is an upper bound of their price. ``--only NAME ...`` keeps
the named targets. No assertions: this
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Target, find_program, free_port, postgres, wait_port


def _total_ir(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _scrape_every_second(port: int, stop: threading.Event) -> None:
    """GET ``/metrics`` once a second until ``stop``, as a Prometheus server would."""
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                r.read()
        except OSError:
            pass


def _count(
    command: list[str], env: dict[str, str], cwd: Path, pgbench: list[str], out: Path
) -> int:
    """Total Ir of ``command`` (a middlebox taking its port from ``{port}``, and its metrics
    port, if any, from ``{metrics_port}``) while ``pgbench`` runs through it."""
    port = free_port()
    metrics_port = free_port()
    scraping = any("{metrics_port}" in a for a in command)
    argv = [
        a.replace("{port}", str(port)).replace("{metrics_port}", str(metrics_port)) for a in command
    ]
    stop = threading.Event()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONHASHSEED": "0", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, 300, proc)
        if scraping:
            wait_port("127.0.0.1", metrics_port, 300, proc)
            threading.Thread(
                target=_scrape_every_second, args=(metrics_port, stop), daemon=True
            ).start()
        run = subprocess.run(
            [*pgbench, "-p", str(port)],
            capture_output=True,
            text=True,
            env={**os.environ, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"},
            check=False,
        )
        if run.returncode:
            raise RuntimeError(f"pgbench failed: {run.stderr[-1500:]}")
    finally:
        stop.set()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            # A fatal signal still lets callgrind write its counts (SIGKILL would not).
            proc.send_signal(signal.SIGTERM)
            proc.wait(300)
    return _total_ir(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1, help="pgbench -c [1]")
    parser.add_argument(
        "--modes", nargs="+", default=["prepared", "extended", "simple"], help="pgbench -M"
    )
    parser.add_argument("--transactions", type=int, nargs=2, default=[200, 1200], metavar="N")
    parser.add_argument("--proxy-src", type=Path, nargs="*", default=[], metavar="DIR")
    parser.add_argument(
        "--metrics", action="store_true", help="also the proxy with --metrics-listen, scraped"
    )
    parser.add_argument(
        "--buffered-pump", action="store_true", help="also the pump as a BufferedProtocol"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="keep only these targets")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found")
    pgbench = find_program("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench not found")

    def proxy_command(upstream: Target) -> list[str]:
        return [
            sys.executable, "-m", "proxy", "--listen", "127.0.0.1:{port}",
            "--upstream", f"{upstream.host}:{upstream.port}", "--log-level", "warning",
        ]  # fmt: skip

    rows: list[tuple[str, str, float]] = []
    with postgres(None) as (direct, scratch):
        init = [str(pgbench), "-h", direct.host, "-p", str(direct.port), "-U", "postgres"]
        subprocess.run([*init, "-i", "-q", "-s", "1", "postgres"], check=True, capture_output=True)
        pump = [sys.executable, str(ROOT / "bench" / "pump.py"), "--listen", "127.0.0.1:{port}",
                "--upstream", f"{direct.host}:{direct.port}"]  # fmt: skip
        targets: list[tuple[str, list[str], dict[str, str], Path]] = [
            ("pump", pump, {}, ROOT),
            ("proxy", proxy_command(direct), {"PYTHONPATH": str(ROOT)}, ROOT),
            ("proxy interpreted", proxy_command(direct),
             {"PYTHONPATH": str(ROOT), "PGDP_PURE_PYTHON": "1"}, ROOT),
        ]  # fmt: skip
        for src in args.proxy_src:
            targets.append((str(src), proxy_command(direct), {"PYTHONPATH": str(src)}, src))
        if args.buffered_pump:
            targets.insert(1, ("pump buffered", [*pump, "--buffered"], {}, ROOT))
        if args.metrics:
            metered = [*proxy_command(direct), "--metrics-listen", "127.0.0.1:{metrics_port}"]
            targets.append(("proxy+metrics", metered, {"PYTHONPATH": str(ROOT)}, ROOT))
        if args.only:
            targets = [t for t in targets if t[0] in args.only]
        for mode in args.modes:
            for name, command, env, cwd in targets:
                counts = []
                for n in args.transactions:
                    bench = ["-n", "-S", "-M", mode, "-c", str(args.clients)]
                    bench += ["-j", str(min(args.clients, 2)), "-t", str(n), "-U", "postgres"]
                    pgb = [str(pgbench), "-h", "127.0.0.1", *bench, "postgres"]
                    counts.append(_count(command, env, cwd, pgb, scratch / f"cg.{name}.{n}"))
                n1, n2 = args.transactions
                per_tx = (counts[1] - counts[0]) / (args.clients * (n2 - n1))
                rows.append((mode, name, per_tx))
                print(f"{mode:10} {name:20} {per_tx:9.0f} Ir/tx", file=sys.stderr)
    print()
    print(
        f"pgbench -S -c {args.clients} -t {args.transactions[0]} vs {args.transactions[1]}, "
        "user-space instructions of the middlebox process per transaction (callgrind)"
    )
    base = "pump" if any(name == "pump" for _, name, _ in rows) else "proxy"
    print(f"| mode | target | Ir/tx | vs {base} |")
    print("|---|---|---|---|")
    base_ir = {mode: ir for mode, name, ir in rows if name == base}
    for mode, name, ir in rows:
        ratio = f"{ir / base_ir[mode]:.3f}" if mode in base_ir else "-"
        print(f"| {mode} | {name} | {ir:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
