"""What a new connection costs through a middlebox: where the time goes, and its CPU.

Run: ``.venv/bin/python bench/bench_connect.py [--connects 500] [--rounds 5] [--upstream HOST:PORT]``

Targets ``direct``, ``pump`` (the blind byte relay of ``bench/pump.py``) and ``proxy``,
interleaved round by round. Each connect is a raw socket (no driver in the measurement):
TCP connect, then StartupMessage (trust authentication) until ReadyForQuery, then
``select 1`` until ReadyForQuery, then Terminate. The table has the median of each step
(over all connects, median over rounds) and the middlebox's CPU time (user + system,
/proc) per connection. The proxy opens its server connection once the StartupMessage
has arrived (a client that says nothing gets no server backend); the pump at accept.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, cpu_seconds, postgres, proxy, pump

PROTOCOL_3 = 196608
STEPS = ("tcp connect", "startup to ready", "first query")


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    body += b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body


QUERY = b"Q" + struct.pack("!I", 4 + 9) + b"select 1\0"
TERMINATE = b"X\0\0\0\4"


def until_ready(sock: socket.socket) -> None:
    """Read until the last bytes received are a ReadyForQuery."""
    received = b""
    while not (len(received) >= 6 and received[-6:-5] == b"Z"):
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed before ReadyForQuery")
        received += data


def one_connect(target: Target, startup: bytes) -> tuple[float, float, float]:
    """Seconds for each of :data:`STEPS`."""
    started = time.perf_counter()
    sock = socket.create_connection((target.host, target.port))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connected = time.perf_counter()
        sock.sendall(startup)
        until_ready(sock)
        ready = time.perf_counter()
        sock.sendall(QUERY)
        until_ready(sock)
        answered = time.perf_counter()
        sock.sendall(TERMINATE)
    finally:
        sock.close()
    return connected - started, ready - connected, answered - ready


def measure(target: Target, args: argparse.Namespace) -> tuple[list[float], float | None]:
    """Median ms of each step, and the middlebox's CPU µs per connection (None: direct)."""
    startup = startup_message(args.user, args.dbname)
    for _ in range(20):  # warm-up
        one_connect(target, startup)
    cpu_before = cpu_seconds(target.pid) if target.name != "direct" and target.pid else None
    samples = [one_connect(target, startup) for _ in range(args.connects)]
    cpu = None
    if cpu_before is not None:
        assert target.pid is not None
        cpu = (cpu_seconds(target.pid) - cpu_before) / args.connects * 1e6
    return [1000 * statistics.median(s[i] for s in samples) for i in range(len(STEPS))], cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=500, help="per target per round [500]")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds [5]")
    parser.add_argument("--upstream", metavar="HOST:PORT", help="existing server [embedded]")
    parser.add_argument("--dbname", default="postgres", help="database [postgres]")
    parser.add_argument("--user", default="postgres", help="user, trust auth assumed [postgres]")
    args = parser.parse_args()

    steps: dict[str, list[list[float]]] = {}
    cpus: dict[str, list[float]] = {}
    with (
        postgres(args.upstream) as (direct, scratch),
        proxy(direct, scratch) as proxied,
        pump(direct, scratch) as pumped,
    ):
        targets = [direct, pumped, proxied]
        for round_ in range(args.rounds):
            for target in targets[round_ % 3 :] + targets[: round_ % 3]:
                times, cpu = measure(target, args)
                steps.setdefault(target.name, []).append(times)
                if cpu is not None:
                    cpus.setdefault(target.name, []).append(cpu)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    def median_step(name: str, i: int) -> float:
        return statistics.median(r[i] for r in steps[name])

    base = sum(median_step("direct", i) for i in range(len(STEPS)))
    print(f"\n{args.connects} raw connects per target per round, {args.rounds} rounds, medians")
    print("| target | " + " ms | ".join(STEPS) + " ms | total ms | added ms | CPU µs/conn |")
    print("|---" * (len(STEPS) + 4) + "|")
    for target in targets:
        values = [median_step(target.name, i) for i in range(len(STEPS))]
        total = sum(values)
        cpu = f"{statistics.median(cpus[target.name]):.0f}" if target.name in cpus else "-"
        added = "-" if target.name == "direct" else f"+{total - base:.3f}"
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {target.name} | {cells} | {total:.3f} | {added} | {cpu} |")


if __name__ == "__main__":
    main()
