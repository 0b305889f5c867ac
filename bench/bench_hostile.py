"""Hostile clients: how long one huge CLEAN-CONNECTION-laden query stalls everyone else,
and how much memory it takes.

Run: ``.venv/bin/python bench/bench_hostile.py [--proxy-src DIR] [--sizes 1 10 100]
[--modes before-login after-login] [--variants mixed pure many] [--observers 4]
[--direct-observers 2]
[--limit 120] [--rss-cap-gb 12] [--hold-mb 500] [--hold-connections 4] [--no-hold]``

Starts its own PostgreSQL 18 (embedded, ``fsync=off``) with a role ``hostile_scram`` that
must log in with a SCRAM password (pg_hba line), and, for every attack, a fresh proxy
(``python -m proxy --log-level warning`` from ``--proxy-src``, default this checkout, so the
code before a fix can be measured with the same script).

Per attack:

* ``--observers`` sessions (psycopg, superuser, through the proxy) run ``select 1`` every
  5 ms (back to back when late) and record every latency; a warm-up of 20 queries each and
  1 s measuring the proxy's CPU rate under the observers alone precede the attack.
  ``--direct-observers`` control sessions do the same straight to PostgreSQL: what the busy
  machine and server cost everyone (``direct worst ms``); a proxy stall is what the
  proxy's observers see beyond that.
* One attacker (raw socket) sends a single Query message of ``size`` MB:
  - ``before-login``: StartupMessage for ``hostile_scram``, waits for the server's
    AuthenticationSASL request, then sends the Query instead of a password;
  - ``after-login``: completes the SCRAM exchange, waits for ReadyForQuery, then sends it.
  The text (``--variants``): ``mixed``: ``select 'a clean connection b', 1 /* clean
  connection */;`` and similar statements (string literals, dollar quotes, comments, quoted
  identifiers holding the words) repeated, with a real ``CLEAN CONNECTION TO ALL FOR
  DATABASE nosuchdb`` at the start (it fails, so the server runs nothing else), in the
  middle and at the end; ``pure``: one statement ``clean connection 1,1,1,...``; ``many``:
  ``clean connection to all for database nosuchdb;`` repeated (every one a real statement).
* The attacker sends in 1 MiB pieces (counting what the proxy accepted before closing, if it
  does), then reads its answer: after login up to ReadyForQuery, before login until the
  connection closes. ``answer s`` is the time from the last byte sent to that moment.
* Every 20 ms a poller reads the proxy's ``VmRSS``; if it passes ``--rss-cap-gb`` the proxy
  is killed (``killed at cap``), and so is it when the attack passes ``--limit`` seconds
  (``> limit``): the old code's pathological cases end, and the machine keeps its memory.
* After the attacker closes, the script waits (at most ``--settle`` s) until an observer has
  completed a query and the proxy's RSS has been stable (±1 MiB) for 2 s: ``RSS after``.
* Reported: observers' worst and p99 ``select 1`` latency over all queries that overlap the
  attack (from the attacker's first byte until RSS settled), the proxy's RSS before, peak
  (``VmHWM``, the proxy being fresh) and after, the proxy's CPU seconds spent on the attack
  (user+sys from ``/proc/PID/stat`` over the window, minus the observers' rate: steadier
  than wall time), and the attacker's answer.

Then the ``hold`` case: ``--hold-connections`` unauthenticated connections each send a
Query header announcing ``--hold-mb`` MB and all of its body but the last byte, then stay
open: RSS once the proxy has read everything (stable), the observers' worst latency, then
RSS after they all closed.

The machine has 2 cores shared by PostgreSQL, the proxy, the observers and the attacker;
wall-clock figures are noisy (and the server's own parsing of a 100 MB query competes for a
core): compare runs made back to back. No assertions: this prints Markdown tables.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _common import (
    ROOT,
    ProxyRun,
    Target,
    check_proxy_source,
    cpu_seconds,
    embedded_postgres,
    proxy_from,
    status_kb,
)

LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+) "
)
ROLE = "hostile_scram"
PASSWORD = "hostile secret"
MB = 1_000_000
SEND_PIECE = 1 << 20
MODES = ("before-login", "after-login")
VARIANTS = ("mixed", "pure", "many")

REAL = b"CLEAN CONNECTION TO ALL FOR DATABASE nosuchdb;\n"
MIXED_BLOCK = (
    b"select 'a clean connection b' as x, 1 /* clean connection */ ;\n" * 6
    + b"select $$clean connection$$, 'clean', 'connection';\n"
    + b"-- clean connection to all for database postgres\n"
    + b'select 1 as "clean connection" /* clean */ /* connection */;\n'
    + b"select E'clean\\' connection' -- clean connection\n;\n"
)


# --- the attacker's query text ---------------------------------------------------------


def attack_text(variant: str, size: int) -> bytes:
    """About ``size`` bytes of query text (no trailing NUL) for ``variant``."""
    if variant == "pure":
        head = b"clean connection "
        return head + b"1," * ((size - len(head)) // 2) + b"1"
    if variant == "many":
        return REAL * max(1, size // len(REAL))
    half = max(0, (size - 3 * len(REAL)) // 2 // len(MIXED_BLOCK))
    filler = MIXED_BLOCK * half
    return REAL + filler + REAL + filler + REAL


def query_header(body_length: int) -> bytes:
    return b"Q" + struct.pack("!I", body_length + 4)


# --- a raw-socket client: startup, SCRAM-SHA-256, message reading ---------------------


def startup_packet(user: str, database: str = "postgres") -> bytes:
    body = struct.pack("!I", 3 << 16)
    for key, value in (("user", user), ("database", database), ("application_name", "attacker")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


class Wire:
    """Typed-message reader over a blocking socket (whose timeout the caller sets)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> tuple[bytes, bytes] | None:
        """The next (type, body), or None at end of stream."""
        while True:
            if len(self.buffer) >= 5:
                length = struct.unpack_from("!I", self.buffer, 1)[0]
                if len(self.buffer) >= 1 + length:
                    kind, body = self.buffer[:1], self.buffer[5 : 1 + length]
                    self.buffer = self.buffer[1 + length :]
                    return kind, body
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(part[0]): part[1:].decode(errors="replace") for part in body.split(b"\0") if part}


def _read_until_ready(wire: Wire) -> None:
    while True:
        message = wire.read()
        if message is None:
            raise RuntimeError("connection closed")
        if message[0] == b"Z":
            return


def sasl_request(wire: Wire) -> None:
    """Read up to the server's AuthenticationSASL; fail on anything else."""
    message = wire.read()
    if message is None or message[0] != b"R" or struct.unpack_from("!I", message[1])[0] != 10:
        raise RuntimeError(f"expected AuthenticationSASL, got {message!r:.200}")


def scram_login(sock: socket.socket, user: str, password: str) -> Wire:
    """StartupMessage and SCRAM-SHA-256 (no channel binding) up to ReadyForQuery."""
    sock.sendall(startup_packet(user))
    wire = Wire(sock)
    sasl_request(wire)
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
    sock.sendall(b"p" + struct.pack("!I", len(body) + 4) + body)
    message = wire.read()
    if message is None or message[0] != b"R" or struct.unpack_from("!I", message[1])[0] != 11:
        raise RuntimeError(f"expected AuthenticationSASLContinue, got {message!r:.200}")
    server_first = message[1][4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    sock.sendall(b"p" + struct.pack("!I", len(final) + 4) + final)
    while True:
        message = wire.read()
        if message is None:
            raise RuntimeError("connection closed during SCRAM login")
        if message[0] == b"E":
            raise RuntimeError(f"login failed: {error_fields(message[1])}")
        if message[0] == b"Z":
            return wire


# --- observers (in a child process, so that the attacker's work here cannot delay them) ---


@dataclass
class Sample:
    start: float  # time.monotonic(): CLOCK_MONOTONIC, the same clock in every process
    end: float
    failed: bool = False
    direct: bool = False  # a control session straight to PostgreSQL


def observe(dsn: str, count: int, direct_dsn: str, direct_count: int, interval: float) -> None:
    """Child process: ``count`` sessions through the proxy and ``direct_count`` control
    sessions straight to PostgreSQL, each in its own thread, run ``select 1`` every
    ``interval`` seconds (or back to back when late); prints ``ready`` after a warm-up of
    20 queries each, and on ``stop`` from stdin the samples as JSON lines.

    Paced rather than flat out, so that the observers' own load on the proxy and the two
    cores stays small while any stall longer than the interval still shows in the latency
    of the query caught in it. The control sessions show what the machine and the server
    (busy parsing the attacker's text) cost everyone, proxy or not.
    """
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(count)]
    conns += [psycopg.connect(direct_dsn, autocommit=True) for _ in range(direct_count)]
    count += direct_count
    samples: list[list[Sample]] = [[] for _ in range(count)]
    stop = threading.Event()

    def run(index: int) -> None:
        conn, series = conns[index], samples[index]
        due = time.monotonic()
        while not stop.is_set():
            start = time.monotonic()
            try:
                conn.execute("select 1").fetchone()
            except psycopg.Error:
                series.append(Sample(start, time.monotonic(), True, index >= count - direct_count))
                return
            end = time.monotonic()
            series.append(Sample(start, end, False, index >= count - direct_count))
            due = max(due + interval, end)
            if due > end:
                stop.wait(due - end)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    while min(len(series) for series in samples) < 20:
        time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.readline()
    stop.set()
    for thread in threads:
        thread.join(30)
    for series in samples:
        for sample in series:
            print(json.dumps([sample.start, sample.end, sample.failed, sample.direct]))
    sys.stdout.flush()
    os._exit(0)  # do not wait for a connection stuck in a killed proxy


class Observers:
    """The observer child process (see :func:`observe`) and a probe session of our own."""

    def __init__(
        self, target: Target, count: int, server: Target, direct: int, interval: float = 0.005
    ) -> None:
        self.target = target
        self.samples: list[Sample] = []
        self._child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--observe",
                target.dsn("postgres", "postgres"),
                "--observers",
                str(count),
                "--observe-direct",
                server.dsn("postgres", "postgres"),
                "--direct-observers",
                str(direct),
                "--interval",
                str(interval),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._probe: Wire | None = None

    def start(self) -> None:
        line = self._child.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError("observers did not start")

    def responsive(self, timeout: float = 1.0) -> bool:
        """A ``select 1`` of our own (raw socket, trust login) answered within ``timeout``."""
        try:
            if self._probe is None:
                sock = socket.create_connection((self.target.host, self.target.port), timeout)
                self._probe = Wire(sock)
                sock.sendall(startup_packet("postgres"))
                _read_until_ready(self._probe)
            self._probe.sock.settimeout(timeout)
            self._probe.sock.sendall(b"Q" + struct.pack("!I", 13) + b"select 1\0")
            _read_until_ready(self._probe)
            return True
        except (OSError, RuntimeError):
            if self._probe is not None:
                self._probe.sock.close()
                self._probe = None  # out of step after a timeout: start afresh next time
            return False

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.sock.close()
        out, _ = self._child.communicate("stop\n", timeout=60)
        for line in out.splitlines():
            self.samples.append(Sample(*json.loads(line)))

    def latencies(self, start: float, end: float, direct: bool = False) -> tuple[list[float], bool]:
        """Latencies (s) of the proxy's (or the control sessions') queries overlapping
        [start, end]; whether any failed."""
        picked = [
            s for s in self.samples if s.direct == direct and s.end >= start and s.start <= end
        ]
        return [s.end - s.start for s in picked], any(s.failed for s in picked)


# --- RSS poller ------------------------------------------------------------------------


class Poller:
    """Polls the proxy's VmRSS every 20 ms; kills the proxy above ``cap_kb``."""

    def __init__(self, run: ProxyRun, cap_kb: int) -> None:
        self.run = run
        self.cap_kb = cap_kb
        self.peak_kb = 0
        self.history: list[tuple[float, int]] = []
        self.killed_at_cap = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        pid = self.run.process.pid
        while not self._stop.is_set():
            rss = status_kb(pid, "VmRSS")
            if rss is None:
                return
            self.peak_kb = max(self.peak_kb, rss)
            self.history.append((time.monotonic(), rss))
            if rss > self.cap_kb and self.run.process.poll() is None:
                self.killed_at_cap = True
                self.run.process.kill()
                return
            self._stop.wait(0.02)

    def stable_since(self, moment: float, window: float = 2.0, tolerance_kb: int = 1024) -> bool:
        """RSS within ±tolerance over the last ``window`` seconds, all of them after ``moment``."""
        now = time.monotonic()
        if now - moment < window:
            return False
        recent = [rss for at, rss in self.history if at >= now - window]
        return len(recent) > 10 and max(recent) - min(recent) <= 2 * tolerance_kb

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- one attack -----------------------------------------------------------------------


@dataclass
class Outcome:
    mode: str
    variant: str
    size_mb: float
    sent_bytes: int = 0
    send_s: float = 0.0
    answer_s: float | None = None  # after the last byte sent; None: no answer
    answer: str = ""
    limit_hit: bool = False
    killed_at_cap: bool = False
    observer_count: int = 0
    observer_worst_ms: float = 0.0
    observer_p99_ms: float = 0.0
    observer_failed: bool = False
    direct_worst_ms: float = 0.0  # control sessions straight to PostgreSQL
    rss_before_kb: int = 0
    rss_peak_kb: int = 0
    rss_after_kb: int | None = None
    settled: bool = False
    proxy_cpu_s: float | None = None  # over the attack window, minus the observers' share
    notes: list[str] = field(default_factory=list)


def _send(sock: socket.socket, data: memoryview, deadline: float) -> tuple[int, str]:
    """Send ``data`` in pieces until done, the peer closes or the deadline; (sent, error)."""
    sent = 0
    while sent < len(data):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            sent += sock.send(data[sent : sent + SEND_PIECE])
        except TimeoutError:
            return sent, "timeout"
        except OSError as exc:
            return sent, type(exc).__name__
    return sent, ""


def _read_answer(wire: Wire, mode: str, deadline: float) -> tuple[str, bool]:
    """Summary of what the server/proxy said, and whether the deadline passed first."""
    parts: list[str] = []
    while True:
        wire.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = wire.read()
        except TimeoutError:
            return ", ".join([*parts, "no answer"]), True
        except OSError as exc:
            return ", ".join([*parts, type(exc).__name__]), False
        if message is None:
            return ", ".join([*parts, "close"]), False
        kind, body = message
        if kind == b"E":
            fields = error_fields(body)
            text = fields.get("M", "")[:48]
            parts.append(f"{fields.get('S', '?')} {fields.get('C', '?')} {text!r}")
        elif kind == b"Z":
            parts.append("Z")
            if mode == "after-login":
                return ", ".join(parts), False
        elif not parts or parts[-1] != kind.decode(errors="replace"):
            parts.append(kind.decode(errors="replace"))


def attack(
    run: ProxyRun, mode: str, text: bytes, deadline: float, outcome: Outcome
) -> socket.socket | None:
    """Send the attack; fill the attacker's side of ``outcome``; return the open socket."""
    sock = socket.create_connection((run.target.host, run.target.port), timeout=30)
    if mode == "after-login":
        wire = scram_login(sock, ROLE, PASSWORD)
    else:
        sock.sendall(startup_packet(ROLE))
        wire = Wire(sock)
        sasl_request(wire)
    start = time.monotonic()
    payload = memoryview(query_header(len(text) + 1) + text + b"\0")
    outcome.sent_bytes, error = _send(sock, payload, deadline)
    sent_at = time.monotonic()
    outcome.send_s = sent_at - start
    if error:
        outcome.notes.append(f"send stopped after {outcome.sent_bytes / MB:.1f} MB: {error}")
    answer, timed_out = _read_answer(wire, mode, deadline)
    outcome.answer = answer
    if timed_out or error == "timeout":
        outcome.limit_hit = True
    else:
        outcome.answer_s = time.monotonic() - sent_at
    return sock


def settle(
    run: ProxyRun, poller: Poller, observers: Observers, since: float, timeout: float
) -> tuple[int | None, bool]:
    """RSS once the proxy is responsive and stable (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    pid = run.process.pid
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            return None, False
        if poller.stable_since(since) and observers.responsive():
            return status_kb(pid, "VmRSS"), True
        time.sleep(0.05)
    return status_kb(pid, "VmRSS"), False


def run_attack(
    src: Path, server: Target, scratch: Path, mode: str, variant: str, size_mb: float, args
) -> Outcome:
    outcome = Outcome(mode, variant, size_mb)
    text = attack_text(variant, int(size_mb * MB))
    with proxy_from(src, server, scratch) as run:
        pid = run.process.pid
        observers = Observers(run.target, args.observers, server, args.direct_observers)
        observers.start()
        poller = Poller(run, int(args.rss_cap_gb * 1024 * 1024))
        idle_rate = observer_cpu_rate(pid)
        outcome.rss_before_kb = status_kb(pid, "VmRSS") or 0
        log_start = run.logfile.stat().st_size
        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        deadline = start + args.limit
        sock = None
        try:
            sock = attack(run, mode, text, deadline, outcome)
        except (OSError, RuntimeError) as exc:
            outcome.notes.append(f"attacker: {exc}")
        if outcome.limit_hit and run.process.poll() is None:
            with contextlib.suppress(OSError):
                cpu_after = cpu_seconds(pid)
                outcome.proxy_cpu_s = (
                    cpu_after - cpu_before - idle_rate * (time.monotonic() - start)
                )
            run.process.kill()
        if sock is not None:
            sock.close()
        closed = time.monotonic()
        if run.process.poll() is None:
            outcome.rss_after_kb, outcome.settled = settle(
                run, poller, observers, closed, args.settle
            )
            with contextlib.suppress(OSError):
                elapsed = time.monotonic() - start
                outcome.proxy_cpu_s = cpu_seconds(pid) - cpu_before - idle_rate * elapsed
        hwm = status_kb(pid, "VmHWM")
        poller.stop()
        outcome.killed_at_cap = poller.killed_at_cap
        outcome.rss_peak_kb = max(hwm or 0, poller.peak_kb)
        end = time.monotonic()
        observers.stop()
        outcome.notes += log_notes(run.logfile, log_start)
        latencies, failed = observers.latencies(start, end)
        outcome.observer_failed = failed
        outcome.observer_count = len(latencies)
        outcome.direct_worst_ms = max(observers.latencies(start, end, True)[0], default=0) * 1000
        if latencies:
            latencies.sort()
            outcome.observer_worst_ms = latencies[-1] * 1000
            outcome.observer_p99_ms = _percentile(latencies, 0.99) * 1000
    return outcome


def observer_cpu_rate(pid: int, seconds: float = 1.0) -> float:
    """The proxy's CPU seconds per second with only the observers at work."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - start)


def log_notes(logfile: Path, since: int, limit: int = 3) -> list[str]:
    """What the proxy logged from byte ``since`` of its log on (the attack, not its start-up):
    distinct warning/error messages and the last line of each traceback (the exception),
    trimmed, with counts."""
    found: dict[str, int] = {}
    in_traceback = False
    with open(logfile, "rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    for line in text.splitlines():
        record = LOG_RECORD.match(line)
        if record:
            in_traceback = False
            text = re.sub(r"conn=\d+ client=\S+ ", "", line[record.end() :])
            text = re.sub(r"\d+", "N", text)[:90]
            found[f"{record.group(1)} {text}"] = found.get(f"{record.group(1)} {text}", 0) + 1
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line.startswith((" ", "During handling")):
            found[f"exception {line[:110]}"] = found.get(f"exception {line[:110]}", 0) + 1
    notes = [
        f"log: {text}" + (f" (x{count})" if count > 1 else "") for text, count in found.items()
    ]
    return notes[:limit] + ([f"log: {len(notes) - limit} more"] if len(notes) > limit else [])


def _percentile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


# --- the hold case: unauthenticated messages with the last byte held back --------------


@dataclass
class HoldOutcome:
    connections: int
    size_mb: float
    accepted_mb: list[float] = field(default_factory=list)
    send_s: float = 0.0
    rss_before_kb: int = 0
    rss_during_kb: int | None = None
    rss_peak_kb: int = 0
    rss_after_kb: int | None = None
    settled: bool = False
    observer_worst_ms: float = 0.0
    observer_p99_ms: float = 0.0
    direct_worst_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_hold(src: Path, server: Target, scratch: Path, args) -> HoldOutcome:
    size = int(args.hold_mb * MB)
    outcome = HoldOutcome(args.hold_connections, args.hold_mb)
    message = bytearray(query_header(size) + b"clean connection ")
    message += b"1," * ((size - 18) // 2)
    message += b"1" * (size + 5 - len(message))
    payload = memoryview(message)[:-1]  # the last byte is held back
    with proxy_from(src, server, scratch) as run:
        pid = run.process.pid
        observers = Observers(run.target, args.observers, server, args.direct_observers)
        observers.start()
        poller = Poller(run, int(args.rss_cap_gb * 1024 * 1024))
        outcome.rss_before_kb = status_kb(pid, "VmRSS") or 0
        log_start = run.logfile.stat().st_size
        socks: list[socket.socket] = []
        start = time.monotonic()
        deadline = start + args.limit
        results: list[tuple[int, str]] = [(0, "")] * args.hold_connections

        def one(index: int) -> None:
            sock = socket.create_connection((run.target.host, run.target.port), timeout=30)
            socks.append(sock)
            try:
                sock.sendall(startup_packet(ROLE))
                sasl_request(Wire(sock))
            except (OSError, RuntimeError) as exc:
                results[index] = (0, f"before sending: {exc}")
                return
            results[index] = _send(sock, payload, deadline)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.hold_connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent = time.monotonic()
        outcome.send_s = sent - start
        outcome.accepted_mb = [round(n / MB, 1) for n, _ in results]
        for n, error in results:
            if error:
                outcome.notes.append(f"send stopped after {n / MB:.1f} MB: {error}")
        outcome.rss_during_kb, _ = settle(run, poller, observers, sent, args.settle)
        for sock in socks:
            sock.close()
        closed = time.monotonic()
        if run.process.poll() is None:
            outcome.rss_after_kb, outcome.settled = settle(
                run, poller, observers, closed, args.settle
            )
        outcome.rss_peak_kb = max(status_kb(pid, "VmHWM") or 0, poller.peak_kb)
        poller.stop()
        if poller.killed_at_cap:
            outcome.notes.append("proxy killed at the RSS cap")
        end = time.monotonic()
        observers.stop()
        outcome.notes += log_notes(run.logfile, log_start)
        latencies, _ = observers.latencies(start, end)
        outcome.direct_worst_ms = max(observers.latencies(start, end, True)[0], default=0) * 1000
        if latencies:
            latencies.sort()
            outcome.observer_worst_ms = latencies[-1] * 1000
            outcome.observer_p99_ms = _percentile(latencies, 0.99) * 1000
    return outcome


# --- output ---------------------------------------------------------------------------


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_attacks(outcomes: list[Outcome], args, src: Path) -> None:
    print()
    print(
        f"One attacker, {args.observers} observers running select 1; proxy from {src}; "
        f"limit {args.limit:g} s, RSS cap {args.rss_cap_gb:g} GB"
    )
    print()
    print(
        "| mode | variant | size MB | sent MB | send s | answer s | answer | observer "
        "queries | worst ms | p99 ms | direct worst ms | RSS before MiB | peak MiB | after MiB "
        "| attack CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        if o.killed_at_cap:
            answer_s = f"killed at cap ({o.send_s + (o.answer_s or 0):.0f} s)"
        elif o.limit_hit:
            answer_s = f"> {args.limit:g}"
        else:
            answer_s = _seconds(o.answer_s)
        worst = f"{o.observer_worst_ms:.1f}" + (" (query failed)" if o.observer_failed else "")
        after = _mib(o.rss_after_kb) + ("" if o.settled or o.rss_after_kb is None else "*")
        answer = o.answer + "".join(f"; {note}" for note in o.notes)
        print(
            f"| {o.mode} | {o.variant} | {o.size_mb:g} | {o.sent_bytes / MB:.1f} | "
            f"{o.send_s:.2f} | {answer_s} | {answer.replace('|', '/')} | {o.observer_count} | "
            f"{worst} | {o.observer_p99_ms:.1f} | {o.direct_worst_ms:.1f} | {_mib(o.rss_before_kb)} | "
            f"{_mib(o.rss_peak_kb)} | {after} | {_seconds(o.proxy_cpu_s)} |"
        )
    print()
    print(
        "`*` after MiB: RSS had not settled within --settle seconds (value at that time). "
        "attack CPU s: the proxy's user+sys CPU over the attack window minus the observers' "
        "share (their CPU rate measured for 1 s before the attack)."
    )


def print_hold(outcome: HoldOutcome, src: Path) -> None:
    print()
    print(
        f"{outcome.connections} unauthenticated connections, each a {outcome.size_mb:g} MB "
        f"Query without its last byte; proxy from {src}"
    )
    print()
    print(
        "| accepted MB per connection | send s | observers worst ms | p99 ms | direct worst ms "
        "| RSS before MiB | RSS during MiB | peak MiB | RSS after close MiB | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    after = _mib(outcome.rss_after_kb) + ("" if outcome.settled else "*")
    print(
        f"| {', '.join(f'{mb:g}' for mb in outcome.accepted_mb)} | {outcome.send_s:.1f} | "
        f"{outcome.observer_worst_ms:.1f} | {outcome.observer_p99_ms:.1f} | "
        f"{outcome.direct_worst_ms:.1f} | "
        f"{_mib(outcome.rss_before_kb)} | {_mib(outcome.rss_during_kb)} | "
        f"{_mib(outcome.rss_peak_kb)} | {after} | {'; '.join(outcome.notes) or '-'} |"
    )


def prepare_role(server: Target) -> None:
    with psycopg.connect(server.dsn("postgres", "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy-src", type=Path, default=ROOT, help="source tree of the proxy")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 100], help="MB")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--observers", type=int, default=4, help="sessions through the proxy")
    parser.add_argument(
        "--direct-observers", type=int, default=2, help="control sessions straight to the server"
    )
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per attack [120]")
    parser.add_argument("--rss-cap-gb", type=float, default=12.0, help="kill the proxy above")
    parser.add_argument("--settle", type=float, default=30.0, help="max wait for RSS to settle")
    parser.add_argument("--hold-mb", type=float, default=500.0)
    parser.add_argument("--hold-connections", type=int, default=4)
    parser.add_argument("--no-hold", action="store_true", help="skip the hold case")
    parser.add_argument("--no-attacks", action="store_true", help="only the hold case")
    parser.add_argument("--observe", help=argparse.SUPPRESS)
    parser.add_argument("--observe-direct", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.005, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.observe:
        observe(
            args.observe, args.observers, args.observe_direct, args.direct_observers, args.interval
        )
        return

    src = args.proxy_src.resolve()
    check_proxy_source(src)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    hba = (f"host all {ROLE} 127.0.0.1/32 scram-sha-256",)
    outcomes: list[Outcome] = []
    hold: HoldOutcome | None = None
    with embedded_postgres(settings, hba) as (server, scratch):
        prepare_role(server)
        if not args.no_attacks:
            for size in args.sizes:
                for variant in args.variants:
                    for mode in args.modes:
                        print(f"attack: {mode} {variant} {size:g} MB ...", file=sys.stderr)
                        outcome = run_attack(src, server, scratch, mode, variant, size, args)
                        outcomes.append(outcome)
                        print(f"  {outcome}", file=sys.stderr, flush=True)
        if not args.no_hold:
            print(f"hold: {args.hold_connections} x {args.hold_mb:g} MB ...", file=sys.stderr)
            hold = run_hold(src, server, scratch, args)
            print(f"  {hold}", file=sys.stderr, flush=True)
    if outcomes:
        print_attacks(outcomes, args, src)
    if hold is not None:
        print_hold(hold, src)
    print(f"\nmachine: {os.cpu_count()} CPUs; wall-clock figures are noisy (shared machine)")


if __name__ == "__main__":
    main()
