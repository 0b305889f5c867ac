"""Wire fuzzing: thousands of connections send garbage, and the proxy stays up and clean.

Each connection is a *case* drawn from a seeded generator (``PGDP_FUZZ_SEED`` to replay a
run; the seed is in every failure message) and runs on a raw socket with a short timeout:

* ``random``: random bytes instead of a startup packet;
* ``startup``: a startup packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest)
  with a bad length, protocol code, truncation, flipped bytes, oversized or odd parameters
  (no terminator, control characters, invalid UTF-8), or followed by garbage;
* ``pre-login``: a StartupMessage for a role that must give a SCRAM password, then (with
  or without waiting for the server's SASL request) mutated typed messages;
* ``post-login``: a trust login up to ReadyForQuery, optionally a valid Parse of a CLEAN
  CONNECTION statement (so that Bind/Execute/Close are inspected too), then mutated typed
  messages: random or protocol type bytes, lengths 0..8, off by a few or huge, truncated
  bodies, Query/Parse/Bind/Execute/Close/Describe/CopyData/Sync/... with random bodies, SQL
  holding ``clean connection`` with and without its NUL terminators;
* and each ends at a random point: close, reset (SO_LINGER 0) or read until the proxy
  closes (bounded).

The cases run in batches, in parallel threads. After every batch: the proxy process is
alive, every new line of its log is a log record (no traceback, no line break smuggled in
by a client), and a normal client still works (``select 1`` and a CLEAN CONNECTION that
fails as it should). The proxy's TCP connections (its sockets in ``/proc/PID/fd`` that
``/proc/net/tcp`` does not list as listening) return to none and its open descriptors to
their count after a warm-up client (waited for with a bound; the warm-up may open some for
good), and its RSS at the end is within ``RSS_SLACK_KB`` of its RSS at the start of the
second half.

Problems are collected over all batches and reported together; for the first batches with
unexpected log lines or leaks, the cases are replayed one at a time to name the culprits.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pytest

from tests.conftest import AUTH_ROLES, PgServer, ProxyProcess, wait_until

StartProxy = Callable[..., ProxyProcess]

BATCH = 250
WORKERS = 24
CONNECTIONS = {"embedded": 3000}  # per server kind; others get DEFAULT_CONNECTIONS
DEFAULT_CONNECTIONS = 2000
SOCKET_TIMEOUT = 2.0  # login and sends
READ_TIMEOUT = 0.3  # "read until closed" endings
SETTLE_TIMEOUT = 3.0  # for the proxy to close both legs of every finished connection
RSS_SLACK_KB = 4096
CULPRIT_BATCHES = 2  # batches whose cases are replayed one by one to name culprits
CULPRIT_BUDGET = 25.0  # seconds
PASSWORD_ROLE = "scram_user"

LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+(\[\d+\])? "
)

PROTOCOL_3 = 3 << 16
SSL_CODE, GSS_CODE, CANCEL_CODE = 80877103, 80877104, 80877102


# --- cases -------------------------------------------------------------------------------


@dataclass
class Case:
    """One connection: how it logs in, what it sends (in pieces), how it ends."""

    index: int
    family: str
    login: str  # "none" | "startup" (password role, no wait) | "sasl" | "trust"
    steps: list[str] = field(default_factory=list)  # what each chunk is, for the report
    chunks: list[bytes] = field(default_factory=list)
    ending: str = "close"  # "close" | "reset" | "read"

    def describe(self) -> str:
        shown = []
        for step, chunk in zip(self.steps, self.chunks, strict=True):
            head = chunk[:48].hex()
            shown.append(f"{step} [{len(chunk)} B: {head}{'...' if len(chunk) > 48 else ''}]")
        return f"#{self.index} {self.family} login={self.login} ending={self.ending}: " + "; ".join(
            shown
        )


def _startup(user: str, **params: str) -> bytes:
    pairs = {"user": user, "database": "postgres", **params}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs.items()) + b"\0"
    return struct.pack("!II", 8 + len(body), PROTOCOL_3) + body


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


CLEAN_TEXTS = [
    b"clean connection to all for database nosuchdb",
    b"CLEAN CONNECTION TO ALL CHECK FOR DATABASE nosuchdb",
    b"clean connection to all for user nosuchuser",
    b"clean connection to node (a, b) for database nosuchdb",
    b"clean connection",
    b"clean connection to",
    b"clean connection to all for database",
    b"clean connection 1,1,1,1,1,1,1,1,1,1,1,1",
    b"select 1; clean connection to all for database nosuchdb; select 2",
    b"select 'clean connection' /* clean connection */",
    b'clean connection to all for database "no\xffsuch"',
    b"clean /* x */ connection to all for database nosuchdb",
    b"clean connection to all for database nosuchdb; clean connection to all for database x",
    b"clean\0connection to all for database nosuchdb",
    b"$$clean connection",
    b"'clean connection",
    b"/* clean connection",
    b"clean connection to all for database e'\\'",
]

# Protocol type bytes, weighted towards the messages the proxy looks into.
TYPE_WEIGHTS = {b"Q": 5, b"P": 5, b"B": 3, b"E": 3, b"C": 2, b"D": 1, b"H": 1, b"S": 1}
TYPE_WEIGHTS |= {b"F": 1, b"X": 1, b"d": 2, b"c": 1, b"f": 1, b"p": 1}


def _sql(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.6:
        text = rng.choice(CLEAN_TEXTS)
    elif roll < 0.8:
        text = rng.choice(CLEAN_TEXTS) + rng.randbytes(rng.randrange(0, 40))
    else:
        text = rng.randbytes(rng.randrange(0, 200))
    if rng.random() < 0.1:
        text = text * rng.randrange(2, 200)
    return text


def _name(rng: random.Random) -> bytes:
    return rng.choice([b"", b"s1", b"p1", b"S_1", rng.randbytes(rng.randrange(0, 12))])


def _maybe_nul(rng: random.Random, text: bytes) -> bytes:
    """``text`` NUL-terminated, most of the time."""
    return text + b"\0" if rng.random() < 0.7 else text


def _body(rng: random.Random, kind: bytes) -> bytes:
    if kind == b"Q":
        return _maybe_nul(rng, _sql(rng))
    if kind == b"P":
        count = rng.choice([0, 1, 2, 0xFFFF, rng.randrange(0, 1 << 16)])
        oids = rng.randbytes(4 * rng.randrange(0, 4))
        body = _maybe_nul(rng, _name(rng)) + _maybe_nul(rng, _sql(rng))
        return body + (struct.pack("!H", count) + oids if rng.random() < 0.8 else b"")
    if kind == b"B":
        body = _maybe_nul(rng, _name(rng)) + _maybe_nul(rng, _name(rng))
        body += struct.pack("!H", rng.choice([0, 1, 0xFFFF]))
        body += struct.pack("!H", rng.choice([0, 1, 2, 0xFFFF]))
        body += struct.pack("!i", rng.choice([-1, 0, 1, 4, 0x7FFFFFFF])) + rng.randbytes(
            rng.randrange(0, 8)
        )
        return body[: rng.randrange(0, len(body) + 1)] if rng.random() < 0.3 else body
    if kind == b"E":
        return _maybe_nul(rng, _name(rng)) + rng.randbytes(rng.choice([0, 2, 4, 4, 7]))
    if kind in (b"C", b"D"):
        return rng.choice([b"S", b"P", b"X", b""]) + _maybe_nul(rng, _name(rng))
    if kind in (b"S", b"H", b"X", b"c") and rng.random() < 0.7:
        return b""
    if kind == b"f":
        return _maybe_nul(rng, rng.randbytes(rng.randrange(0, 30)))
    if kind == b"p":
        return rng.choice([b"SCRAM-SHA-256\0", b"", b"pw secret\0"]) + rng.randbytes(
            rng.randrange(0, 40)
        )
    return rng.randbytes(rng.choice([0, 1, 5, 100, 3000]))


def typed_message(rng: random.Random) -> tuple[str, bytes]:
    """One mutated typed message (maybe truncated) and its description."""
    roll = rng.random()
    if roll < 0.1:
        kind = bytes([rng.randrange(256)])
    else:
        kind = rng.choices(list(TYPE_WEIGHTS), list(TYPE_WEIGHTS.values()))[0]
    body = _body(rng, kind)
    how = rng.choices(["ok", "small", "huge", "off"], [0.65, 0.1, 0.1, 0.15])[0]
    length = len(body) + 4
    if how == "small":
        length = rng.randrange(0, 9)
    elif how == "huge":
        length = rng.choice([0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0xFFFFFFFF, 100_000_000])
    elif how == "off":
        length = max(0, length + rng.choice([-3, -2, -1, 1, 2, 7, 1000]))
    data = kind + struct.pack("!I", length) + body
    step = f"{kind!r} len={how}"
    if rng.random() < 0.15:
        data = data[: rng.randrange(1, len(data) + 1)]
        step += " truncated"
    return step, data


def startup_mutation(rng: random.Random, user: str) -> tuple[str, bytes]:
    """A startup-phase packet, mutated one way or another."""
    how = rng.choice(
        [
            "length",
            "code",
            "truncated",
            "flipped",
            "oversized",
            "params",
            "request-bad-length",
            "then-garbage",
            "cancel",
        ]
    )
    valid = _startup(user, application_name="fuzz")
    if how == "length":
        length = rng.choice([0, 1, 4, 7, 8, 9, len(valid) - 1, len(valid) + 1, 10_000, 10_001])
        length = rng.choice([length, rng.randrange(1 << 32), 0xFFFFFFFF, 0x7FFFFFFF])
        return f"startup length={length}", struct.pack("!I", length) + valid[4:]
    if how == "code":
        codes = [0, 1 << 16, 2 << 16, PROTOCOL_3 | 1, PROTOCOL_3 | 2, PROTOCOL_3 | 99, 4 << 16]
        codes += [SSL_CODE, GSS_CODE, CANCEL_CODE, 80877105, rng.randrange(1 << 32)]
        code = rng.choice(codes)
        return f"startup code={code}", valid[:4] + struct.pack("!I", code) + valid[8:]
    if how == "truncated":
        return "startup truncated", valid[: rng.randrange(1, len(valid))]
    if how == "flipped":
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "startup flipped", bytes(data)
    if how == "oversized":
        size = rng.choice([10_001, 20_000, 65_536, 200_000])
        return f"startup oversized={size}", _startup(user, options="x" * size)
    if how == "params":
        odd = rng.choice(
            [
                {"user": "fuzz\nuser"},
                {"application_name": "line1\nline2 not a log record"},
                {"application_name": "\x1b[31mred\r"},
                {"replication": "database"},
                {"options": "-c statement_timeout=1"},
                {"_pq_.unknown": "1"},
                {"user": ""},
                {"database": "nosuch\ndb"},
            ]
        )
        user_value = odd.pop("user", user)
        data = _startup(user_value, **odd)
        if rng.random() < 0.3:
            data = data[:-1]  # no final terminator
            data = struct.pack("!I", len(data)) + data[4:]
        if rng.random() < 0.2:
            data = data.replace(b"fuzz", b"\xff\xfe")
        return f"startup params={odd!r} user={user_value!r}", data
    if how == "request-bad-length":
        code = rng.choice([SSL_CODE, GSS_CODE, CANCEL_CODE])
        length = rng.choice([8, 9, 12, 16, 300])
        return f"request code={code} length={length}", struct.pack("!II", length, code) + bytes(
            max(0, length - 8)
        )
    if how == "then-garbage":
        first = rng.choice([struct.pack("!II", 8, SSL_CODE), struct.pack("!II", 8, GSS_CODE)])
        return "request then garbage", first + rng.randbytes(rng.randrange(1, 300))
    key = rng.randbytes(rng.choice([8, 8, 4, 32, 300]))
    return "cancel", struct.pack("!II", 8 + len(key), CANCEL_CODE) + key


def make_case(rng: random.Random, index: int, user: str) -> Case:
    family = rng.choices(["random", "startup", "pre-login", "post-login"], [1, 3, 3, 4])[0]
    case = Case(index, family, "none", ending=rng.choices(["close", "reset", "read"], [4, 2, 4])[0])
    if family == "random":
        size = rng.choice([rng.randrange(1, 16), rng.randrange(16, 300), rng.randrange(300, 5000)])
        case.steps.append("random bytes")
        case.chunks.append(rng.randbytes(size))
        return case
    if family == "startup":
        for _ in range(rng.choice([1, 1, 1, 2])):
            step, data = startup_mutation(rng, user)
            case.steps.append(step)
            case.chunks.append(data)
        return case
    if family == "pre-login":
        case.login = rng.choice(["startup", "sasl"])
    else:
        case.login = "trust"
        if rng.random() < 0.3:
            clean = rng.choice(CLEAN_TEXTS[:4])
            case.steps.append("valid Parse of a CLEAN statement")
            case.chunks.append(_msg(b"P", b"s1\0" + clean + b"\0\0\0"))
    for _ in range(rng.randrange(1, 5)):
        step, data = typed_message(rng)
        case.steps.append(step)
        case.chunks.append(data)
        if step.endswith("truncated"):
            break  # nothing the peer could frame comes after it
    return case


# --- running a case ----------------------------------------------------------------------


def _read_until_ready(sock: socket.socket) -> bool:
    """Read messages up to ReadyForQuery (True) or until an error/close (False)."""
    buffer = b""
    while True:
        while len(buffer) >= 5:
            length = struct.unpack_from("!I", buffer, 1)[0]
            if len(buffer) < 1 + length:
                break
            kind, buffer = buffer[:1], buffer[1 + length :]
            if kind == b"Z":
                return True
            if kind == b"E":
                return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buffer += chunk


def run_case(case: Case, host: str, port: int, user: str) -> str | None:
    """Run ``case``; a description of what went wrong on the client side, or None.

    Everything the proxy may legitimately do to a hostile client (error, close, reset,
    silence) is fine; a trust login that fails is not.
    """
    try:
        sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
    except OSError as exc:
        return f"connect failed: {exc}"
    try:
        if case.login == "trust":
            sock.sendall(_startup(user, application_name=f"fuzz-{case.index}"))
            if not _read_until_ready(sock):
                return "trust login failed"
        elif case.login in ("startup", "sasl"):
            sock.sendall(_startup(PASSWORD_ROLE, application_name=f"fuzz-{case.index}"))
            if case.login == "sasl":
                header = sock.recv(5)
                if header[:1] != b"R":
                    return f"expected the SASL request, got {header!r}"
        for chunk in case.chunks:
            sock.sendall(chunk)
        if case.ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif case.ending == "read":
            sock.settimeout(READ_TIMEOUT)
            while sock.recv(65536):
                pass
    except OSError:
        pass  # reset, broken pipe, timeout: the proxy may treat garbage so
    finally:
        sock.close()
    return None


# --- the proxy under test ------------------------------------------------------------------


class Watched:
    """The proxy process: liveness, descriptors, RSS and new log lines."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.pid = proxy.process.pid
        self._log_offset = 0

    def alive(self) -> bool:
        return self.proxy.process.poll() is None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connections(self) -> int:
        """TCP sockets the proxy holds that are not listening (client and server legs, in
        any state, CLOSE-WAIT included)."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        held = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    held += fields[9] in inodes and fields[3] != "0A"  # 0A: LISTEN
        return held

    def at_rest(self) -> tuple[int, int]:
        """(descriptors, connections) now."""
        return self.fds(), self.connections()

    def fd_targets(self) -> collections.Counter[str]:
        targets: collections.Counter[str] = collections.Counter()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                targets[re.sub(r"\[\d+\]", "[]", os.readlink(f"/proc/{self.pid}/fd/{fd}"))] += 1
        return targets

    def rss_kb(self) -> int:
        return self.proxy.rss_kb()

    def new_log_lines(self) -> list[str]:
        with open(self.proxy.logfile, "rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        return complete.decode(errors="replace").splitlines()

    def settle(self, rest_fds: int, timeout: float) -> bool:
        """Wait (bounded) until the proxy holds no more descriptors than ``rest_fds`` (a
        count taken when it held no connection, or only leaked ones)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if self.fds() <= rest_fds:
                return True
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return False


def bad_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if not LOG_RECORD.match(line)]


def exception_summary(lines: list[str]) -> collections.Counter[str]:
    """The last line of every traceback in ``lines`` (``ValueError: ...``), counted."""
    found: collections.Counter[str] = collections.Counter()
    in_traceback = False
    previous = ""
    for line in [*lines, ""]:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and not line.startswith((" ", "Traceback")):
            found[line[:160] if line else previous[:160]] += 1
            in_traceback = False
        previous = line
    return found


def normal_client_works(proxy: ProxyProcess) -> str | None:
    """None if a well-behaved client is served as usual, else what failed."""
    try:
        with proxy.connect(connect_timeout=10) as conn:
            if conn.execute("select 41 + 1").fetchone() != (42,):
                return "select returned a wrong row"
            try:
                conn.execute("clean connection to all for database nosuchdb")
            except psycopg.errors.InvalidCatalogName:
                pass
            else:
                return "CLEAN CONNECTION on a missing database did not fail"
            if conn.execute("select 'still'").fetchone() != ("still",):
                return "session unusable after CLEAN CONNECTION"
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def log_barrier(watched: Watched, host: str, port: int, timeout: float = 5.0) -> None:
    """Return once the proxy has logged everything it did before now: a connection sends an
    invalid startup length, and we wait for the warning that names its port (the event loop
    handles events in order)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        marker = f"client=127.0.0.1:{sock.getsockname()[1]} "
        sock.sendall(struct.pack("!II", 4, 0))
        wait_until(lambda: marker in watched.proxy.log(), timeout, "the barrier's log line")


def find_culprits(
    cases: list[Case], watched: Watched, host: str, port: int, user: str, budget: float
) -> tuple[list[tuple[Case, str]], int]:
    """Replay ``cases`` one at a time: those after which the proxy kept descriptors open
    (waited for 1 s each) or the log gained lines that are not log records; and how many
    cases were replayed within ``budget`` seconds.

    A log barrier after each case attributes log lines to the case that caused them, except
    lines written later by design (asyncio's "Task exception was never retrieved" appears
    when the task is garbage-collected): those may be blamed on a later case.
    """
    culprits: list[tuple[Case, str]] = []
    deadline = time.monotonic() + budget
    replayed = 0
    for case in cases:
        if time.monotonic() > deadline or not watched.alive():
            break
        before = watched.at_rest()
        run_case(case, host, port, user)
        replayed += 1
        if not watched.settle(before[0], 1.0):
            culprits.append((case, f"left {watched.connections() - before[1]} connections open"))
        log_barrier(watched, host, port)
        bad = bad_lines(watched.new_log_lines())
        if bad:
            culprits.append((case, f"log: {bad[-1][:200]}"))
    return culprits, replayed


# --- the test ------------------------------------------------------------------------------


def test_wire_fuzz(start_proxy: StartProxy, pg: PgServer) -> None:
    assert PASSWORD_ROLE in AUTH_ROLES
    seed = int(os.environ.get("PGDP_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    total = int(
        os.environ.get("PGDP_FUZZ_CONNECTIONS") or CONNECTIONS.get(pg.name, DEFAULT_CONNECTIONS)
    )
    tag = f"seed={seed} (replay: PGDP_FUZZ_SEED={seed} PGDP_FUZZ_CONNECTIONS={total})"
    print(tag)
    rng = random.Random(seed)
    cases = [make_case(rng, index, pg.user) for index in range(total)]
    batches = [cases[i : i + BATCH] for i in range(0, total, BATCH)]

    proxy = start_proxy()
    watched = Watched(proxy)
    # The first connection makes libuv open its one reserve descriptor (/dev/null, kept for
    # its EMFILE handling) for good: take the descriptors at rest after a warm-up client,
    # once the proxy holds no TCP connection.
    assert normal_client_works(proxy) is None  # warm-up
    wait_until(lambda: watched.connections() == 0, 10, "the warm-up client's sockets to close")
    baseline = expected = watched.at_rest()  # listener, epoll, log, pipes...; no connection
    watched.new_log_lines()

    problems: list[str] = []
    exceptions: collections.Counter[str] = collections.Counter()
    culprit_reports: list[str] = []
    rss: list[int] = []
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        for number, batch in enumerate(batches, 1):
            outcomes = pool.map(lambda c: run_case(c, proxy.host, proxy.port, pg.user), batch)
            client_side = [
                (case, outcome)
                for case, outcome in zip(batch, outcomes, strict=True)
                if outcome is not None
            ]
            if not watched.alive():
                pytest.fail(
                    f"{tag}: the proxy died during batch {number} "
                    f"(exit {proxy.process.returncode}); log tail:\n{proxy.log()[-4000:]}"
                )
            for case, outcome in client_side[:3]:
                problems.append(f"batch {number}: {outcome}: {case.describe()}")
            failure = normal_client_works(proxy)
            if failure is not None:
                problems.append(f"batch {number}: a normal client failed: {failure}")
            trouble = False
            if not watched.settle(expected[0], SETTLE_TIMEOUT):
                trouble = True
                fds, connections = watched.at_rest()
                problems.append(
                    f"batch {number}: {connections - expected[1]} more connections and "
                    f"{fds - expected[0]} more descriptors open {SETTLE_TIMEOUT:g} s after its "
                    f"clients closed: {dict(watched.fd_targets())}"
                )
                expected = (max(fds, expected[0]), max(connections, expected[1]))  # once each
            rss.append(watched.rss_kb())
            lines = watched.new_log_lines()
            bad = bad_lines(lines)
            if bad:
                trouble = True
                exceptions.update(exception_summary(lines))
                problems.append(
                    f"batch {number}: {len(bad)} log lines that are not log records, e.g. "
                    + " | ".join(line[:160] for line in bad[:4])
                )
            if trouble and len(culprit_reports) < CULPRIT_BATCHES:
                culprits, replayed = find_culprits(
                    batch, watched, proxy.host, proxy.port, pg.user,
                    CULPRIT_BUDGET / CULPRIT_BATCHES,
                )  # fmt: skip
                expected = watched.at_rest()
                report = [
                    f"batch {number} replayed one case at a time ({replayed} of {len(batch)} "
                    f"within the time budget): {len(culprits)} culprits"
                ]
                for case, what in culprits[:12]:
                    report.append(f"  {case.describe()}\n    -> {what}")
                culprit_reports.append("\n".join(report))
    elapsed = time.monotonic() - started
    half = rss[len(rss) // 2 - 1] if len(rss) > 1 else rss[0]
    print(
        f"{total} connections in {len(batches)} batches, {elapsed:.1f} s; RSS KiB after each "
        f"batch: {rss}; (descriptors, connections) at rest: {baseline}, at the end: "
        f"{watched.at_rest()}"
    )
    fds, connections = watched.at_rest()
    if fds > baseline[0] or connections > baseline[1]:
        problems.append(
            f"{connections - baseline[1]} connections, {fds - baseline[0]} descriptors "
            "leaked in all"
        )
    if rss[-1] - half > RSS_SLACK_KB:
        problems.append(
            f"RSS grew by {rss[-1] - half} KiB over the second half (limit {RSS_SLACK_KB}): {rss}"
        )
    families = collections.Counter(case.family for case in cases)
    summary = (
        f"{tag}: {len(problems)} problems over {total} connections {dict(families)}\n"
        + "\n".join(problems[:40])
        + ("\nexceptions in the log: " + str(dict(exceptions)) if exceptions else "")
        + ("\n" + "\n".join(culprit_reports) if culprit_reports else "")
    )
    assert not problems, summary


def test_case_generator_is_deterministic() -> None:
    """The same seed gives the same cases (what PGDP_FUZZ_SEED relies on)."""
    first_rng, second_rng = random.Random(7), random.Random(7)
    first = [make_case(first_rng, i, "u") for i in range(200)]
    second = [make_case(second_rng, i, "u") for i in range(200)]
    assert [c.describe() for c in first] == [c.describe() for c in second]
    assert len({c.family for c in first}) == 4
