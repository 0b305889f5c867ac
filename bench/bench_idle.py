"""Memory per idle client connection: the proxy (and PgBouncer for comparison).

Run: ``.venv/bin/python bench/bench_idle.py [--connections 1000] [--upstream HOST:PORT]``

For each middlebox: warm up (open and close a few sessions), read its VmRSS, open
``--connections`` client sessions that complete the startup handshake (StartupMessage →
... → ReadyForQuery, trust authentication) and then sit idle, read VmRSS again and print
(after − before) / connections. The clients live in a child process (this script with
``--hold``), so the measuring process stays small.

``--profile`` instead runs the proxy inside this process under tracemalloc and prints which
allocation sites and object types the idle sessions account for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import linecache
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Target, pgbouncer, postgres, proxy, pump, raise_nofile, rss_kb

PROTOCOL_3 = 196608


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for key, value in (("user", user), ("database", database), ("application_name", "idle")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def handshake(host: str, port: int, user: str, database: str) -> socket.socket:
    """A connected socket whose session has reached ReadyForQuery (trust auth)."""
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(startup_message(user, database))
    buf = b""
    while True:
        while len(buf) >= 5:
            kind = buf[0:1]
            length = struct.unpack_from("!I", buf, 1)[0]
            if len(buf) < 1 + length:
                break
            body, buf = buf[5 : 1 + length], buf[1 + length :]
            if kind == b"E":
                raise RuntimeError(f"server error: {body!r}")
            if kind == b"R" and struct.unpack_from("!I", body)[0] != 0:
                raise RuntimeError("authentication other than trust requested")
            if kind == b"Z":
                return sock
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed during startup")
        buf += chunk


def hold(host: str, port: int, count: int, user: str, database: str) -> None:
    """Child process: open ``count`` sessions, say ``ready``, keep them until stdin closes."""
    raise_nofile(count + 100)
    socks = [handshake(host, port, user, database) for _ in range(count)]
    print("ready", flush=True)
    sys.stdin.read()
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.sendall(b"X\0\0\0\4")  # Terminate
        sock.close()


@contextlib.contextmanager
def clients(target: Target, count: int, args: argparse.Namespace):
    """``count`` idle sessions through ``target``, held by a child process."""
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--hold",
            f"{target.host}:{target.port}",
            "--connections",
            str(count),
            "--user",
            args.user,
            "--dbname",
            args.dbname,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"client process failed for {target.name}")
        yield
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()  # type: ignore[union-attr]
        child.wait(60)


def settle() -> None:
    time.sleep(1.0)


def per_connection(target: Target, args: argparse.Namespace) -> tuple[int, int, float]:
    """RSS before, after (KiB) and the difference per connection (KiB) for ``target``."""
    assert target.pid is not None
    with clients(target, 20, args):  # warm-up: code paths, free lists, first arenas
        pass
    settle()
    before = rss_kb(target.pid)
    started = time.monotonic()
    with clients(target, args.connections, args):
        elapsed = time.monotonic() - started
        settle()
        after = rss_kb(target.pid)
    print(
        f"{target.name}: {args.connections} sessions opened in {elapsed:.1f} s, "
        f"RSS {before} KiB -> {after} KiB",
        file=sys.stderr,
    )
    return before, after, (after - before) / args.connections


def measure(args: argparse.Namespace) -> None:
    settings = {"max_connections": str(args.connections + 100)}
    rows: list[tuple[str, int, int, float]] = []
    with postgres(args.upstream, settings) as (direct, scratch):
        with proxy(direct, scratch, log_level="warning") as target:
            rows.append((target.name, *per_connection(target, args)))
        with pump(direct, scratch) as target:  # the floor: two uvloop transports, no framing
            rows.append((target.name, *per_connection(target, args)))
        with pgbouncer(
            direct,
            scratch,
            user=args.user,
            max_client_conn=args.connections + 100,
            pool_size=args.connections + 50,
        ) as target:
            if target is None:
                print("pgbouncer not on PATH: skipped", file=sys.stderr)
            else:
                rows.append((target.name, *per_connection(target, args)))
    print()
    print(f"{args.connections} idle client sessions (startup completed, trust auth)")
    print("| target | RSS before KiB | RSS after KiB | KiB per connection |")
    print("|---|---|---|---|")
    for name, before, after, per in rows:
        print(f"| {name} | {before} | {after} | {per:.1f} |")


# --- profiling -------------------------------------------------------------------------


def _run_proxy_in_thread(direct: Target, port: int) -> tuple[threading.Thread, list]:
    from proxy.app import event_loop_factory
    from proxy.config import load_config
    from proxy.server import ProxyServer

    config = load_config(
        ["--listen", f"127.0.0.1:{port}", "--upstream", f"{direct.host}:{direct.port}"]
    )
    holder: list = []
    ready = threading.Event()

    async def serve() -> None:
        from proxy.clean import CleanConnectionDialect
        from proxy.runtime import Runtime

        runtime = Runtime(config, config.upstream, dialect=CleanConnectionDialect())  # type: ignore[arg-type]
        server = ProxyServer(runtime)
        await server.start()
        holder.extend([asyncio.get_running_loop(), server])
        ready.set()
        await server.serve()

    def main() -> None:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("in-process proxy did not start")
    return thread, holder


def _type_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(obj).__qualname__ for obj in gc.get_objects())


def profile(args: argparse.Namespace) -> None:
    from proxy.embedded import free_port

    settings = {"max_connections": str(args.connections + 100)}
    with postgres(args.upstream, settings) as (direct, _scratch):
        port = free_port()
        tracemalloc.start(args.frames)
        thread, (loop, server) = _run_proxy_in_thread(direct, port)
        target = Target("proxy (in-process)", "127.0.0.1", port)
        with clients(target, 20, args):
            pass
        settle()
        counts_before = _type_counts()
        snap_before = tracemalloc.take_snapshot()
        rss_before = rss_kb(_self_pid())
        with clients(target, args.connections, args):
            settle()
            counts_after = _type_counts()
            snap_after = tracemalloc.take_snapshot()
            rss_after = rss_kb(_self_pid())
        loop.call_soon_threadsafe(server.request_stop, False)
        thread.join(10)
    n = args.connections
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    snap_before = snap_before.filter_traces(filters)
    snap_after = snap_after.filter_traces(filters)
    stats = snap_after.compare_to(snap_before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"\n{n} idle sessions through an in-process proxy (tracemalloc, {args.frames} frames)")
    print(
        f"RSS (incl. tracemalloc overhead) {(rss_after - rss_before) / n:.1f} KiB/conn; "
        f"traced Python allocations {total / n / 1024:.2f} KiB/conn"
    )
    print("\ntop allocation sites (innermost Python frame; C code such as uvloop allocates")
    print("under the Python frame that called it): bytes and allocations per connection")
    for stat in stats[: args.top]:
        frame = stat.traceback[0]
        source = linecache.getline(frame.filename, frame.lineno).strip()
        print(
            f"  {stat.size_diff / n:7.0f} B {stat.count_diff / n:5.2f}  "
            f"{_short(frame.filename)}:{frame.lineno}  {source[:70]}"
        )
    print("\nby call path (top 6; the 3 innermost frames, innermost first):")
    for stat in snap_after.compare_to(snap_before, "traceback")[:6]:
        frames = list(stat.traceback)[-3:][::-1]
        path = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in frames)
        print(f"  {stat.size_diff / n:7.0f} B  {path}")
    print("\ngc-tracked objects per connection, by type:")
    delta = counts_after - counts_before
    for name, count in delta.most_common(args.top):
        print(f"  {count / n:6.2f}  {name}")


def _self_pid() -> int:
    import os

    return os.getpid()


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle sessions [1000]")
    parser.add_argument("--upstream", metavar="HOST:PORT", help="existing server [embedded]")
    parser.add_argument("--dbname", default="postgres", help="database [postgres]")
    parser.add_argument("--user", default="postgres", help="user, trust auth assumed [postgres]")
    parser.add_argument(
        "--profile", action="store_true", help="tracemalloc an in-process proxy instead"
    )
    parser.add_argument("--frames", type=int, default=10, help="tracemalloc frames [10]")
    parser.add_argument("--top", type=int, default=15, help="rows per profile listing [15]")
    parser.add_argument("--hold", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        host, _, port = args.hold.rpartition(":")
        hold(host, int(port), args.connections, args.user, args.dbname)
        return
    # The proxy needs two descriptors per session; children inherit the limit.
    raise_nofile(4 * args.connections + 200)
    if args.profile:
        profile(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
