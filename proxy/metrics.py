"""Prometheus metrics (``--metrics-listen``): ``/metrics`` and ``/healthz``.

The hot path pays nothing: per-read numbers (bytes, request and response groups) are the
plain integers the sessions keep anyway; :meth:`Metrics.sample` turns them into counters
and gauges once per ``SAMPLE_INTERVAL`` on the event loop (and at every scrape in a single
process). Events are counted once per session (:class:`proxy.events.SessionEvents`) or per
CLEAN CONNECTION (:meth:`Metrics.clean_connection`).

With ``--workers N`` the values live in prometheus_client's multiprocess files, in a
directory the supervisor creates (:func:`use_multiprocess_dir`); the supervisor serves
one endpoint summing all workers (:class:`prometheus_client.multiprocess.MultiProcessCollector`):
counters survive a worker's restart, gauges of a dead worker are dropped
(:func:`worker_exited`), and per-worker gauges carry a ``worker`` label.

``/healthz`` answers 200 while some process accepts clients and the last upstream connect
succeeded (or none was tried), 503 otherwise (draining, not started, upstream down).
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as _multiprocess

from .audit import AuditRecord
from .config import Address
from .session import Phase

SAMPLE_INTERVAL = 1.0  # seconds between two samples of the sessions' own counters
OTHER = "other"  # the label value of databases/users beyond the label limit
PHASES = ("startup", "tls", "relay")
HTTP_CONNECTIONS = 16  # metrics connections served at once; more are closed on accept
HTTP_TIMEOUT = 10.0  # seconds a metrics connection may stay silent before it is closed

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_dir() -> str:
    """Create the directory the workers' values go to and switch prometheus_client to
    multiprocess values; call in the supervisor before the workers are forked."""
    directory = tempfile.mkdtemp(prefix="pgdp-metrics-")
    os.environ[_ENV] = directory
    values.ValueClass = values.MultiProcessValue()
    return directory


def remove_multiprocess_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(_ENV, None)


def worker_exited(pid: int) -> None:
    """Forget the live gauges of a worker that exited (its counters stay counted)."""
    if os.environ.get(_ENV):
        _multiprocess.mark_process_dead(pid)


def collecting_registry() -> CollectorRegistry:
    """The registry the supervisor serves: the sum over every worker's files."""
    registry = CollectorRegistry()
    registry.register(_RetryingCollector())
    return registry


class _RetryingCollector:
    """prometheus_client's MultiProcessCollector, read again when a file was caught while a
    (re)starting worker creates it (empty, or gone in between)."""

    def __init__(self) -> None:
        self._inner = _multiprocess.MultiProcessCollector(None)

    def collect(self) -> list[Any]:
        for _ in range(20):
            try:
                return list(self._inner.collect())
            except (struct.error, OSError, ValueError):
                time.sleep(0.005)
        return list(self._inner.collect())


class _Delta:
    """Feeds a monotonic total into a counter as increments."""

    __slots__ = ("counter", "reported")

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.reported = 0

    def update(self, total: int) -> None:
        if total > self.reported:
            self.counter.inc(total - self.reported)
            self.reported = total


class Metrics:
    """The metrics of one process. ``registry`` is None in a worker (the values go to the
    multiprocess files); ``worker`` names this process in per-worker gauges."""

    def __init__(
        self, registry: CollectorRegistry | None, *, worker: str = "0", label_limit: int = 100
    ) -> None:
        r = registry
        self.registry = registry
        self.worker = worker
        self.label_limit = label_limit
        self.connections = Gauge(
            "pgdp_client_connections",
            "Client connections open now, by phase (startup, tls handshake, relay)",
            ["phase", "worker"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_total = Counter(
            "pgdp_client_connections_accepted", "Client connections accepted", registry=r
        )
        self.refused = Counter(
            "pgdp_client_connections_refused",
            "Client connections refused or ended by the proxy, by reason",
            ["reason"],
            registry=r,
        )
        self.by_database = Gauge(
            "pgdp_client_connections_by_database",
            "Client connections open now per database (beyond the label limit: other)",
            ["database"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.by_user = Gauge(
            "pgdp_client_connections_by_user",
            "Client connections open now per user (beyond the label limit: other)",
            ["user"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connect_seconds = Histogram(
            "pgdp_upstream_connect_seconds",
            "Time to open a server connection (TLS negotiation included)",
            registry=r,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
        )
        self.connect_failures = Counter(
            "pgdp_upstream_connect_failures", "Server connections that failed", registry=r
        )
        self.last_success = Gauge(
            "pgdp_upstream_last_connect_success_timestamp_seconds",
            "When a server connection last opened",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.last_failure = Gauge(
            "pgdp_upstream_last_connect_failure_timestamp_seconds",
            "When a server connection last failed",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.bytes = Counter(
            "pgdp_bytes",
            "Bytes relayed, by direction (client_to_server, server_to_client)",
            ["direction"],
            registry=r,
        )
        self.messages = Counter(
            "pgdp_message_groups",
            "Request groups clients sent (Query, Sync, FunctionCall: client_to_server) and "
            "groups the server answered (ReadyForQuery: server_to_client)",
            ["direction"],
            registry=r,
        )
        self.tls_failures = Counter(
            "pgdp_tls_handshake_failures", "Client TLS handshakes that failed", registry=r
        )
        self.clean = Counter(
            "pgdp_clean_connection",
            "CLEAN CONNECTION executions by outcome (ok or the SQLSTATE)",
            ["outcome"],
            registry=r,
        )
        self.clean_seconds = Histogram(
            "pgdp_clean_connection_seconds",
            "CLEAN CONNECTION execution time",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
        )
        self.clean_sessions = Counter(
            "pgdp_clean_connection_sessions",
            "Sessions CLEAN CONNECTION terminated or skipped (no privilege)",
            ["action"],
            registry=r,
        )
        self.accepting = Gauge(
            "pgdp_accepting",
            "1 while this process accepts clients, 0 while draining",
            ["worker"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._closed = [0, 0, 0, 0]  # bytes in, bytes out, requests, responses of closed sessions
        self._deltas = [
            _Delta(self.bytes.labels("client_to_server")),
            _Delta(self.bytes.labels("server_to_client")),
            _Delta(self.messages.labels("client_to_server")),
            _Delta(self.messages.labels("server_to_client")),
        ]
        self._labels: dict[str, dict[str, None]] = {"database": {}, "user": {}}
        self._phase_gauges = [self.connections.labels(p, worker) for p in PHASES]
        for reason in ("limit", "login_timeout", "protocol_violation", "upstream_unreachable"):
            self.refused.labels(reason)
        self.clean_sessions.labels("terminated")
        self.clean_sessions.labels("skipped")
        self.accepting.labels(worker).set(0)

    # --- events (once per session) -----------------------------------------------------

    def accepted(self) -> None:
        self.connections_total.inc()

    def refused_for(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def upstream_connected(self, seconds: float) -> None:
        self.connect_seconds.observe(seconds)
        self.last_success.set(time.time())

    def upstream_failed(self, seconds: float) -> None:
        self.connect_failures.inc()
        self.last_failure.set(time.time())

    def tls_failed(self) -> None:
        self.tls_failures.inc()

    def set_accepting(self, accepting: bool) -> None:
        self.accepting.labels(self.worker).set(1 if accepting else 0)

    def session_closed(self, bytes_in: int, bytes_out: int, requests: int, responses: int) -> None:
        closed = self._closed
        closed[0] += bytes_in
        closed[1] += bytes_out
        closed[2] += requests
        closed[3] += responses

    def clean_connection(self, record: AuditRecord) -> None:
        """One CLEAN CONNECTION execution (an :class:`~proxy.audit.AuditTrail` listener)."""
        self.clean.labels("ok" if record.result == "ok" else record.sqlstate or "error").inc()
        self.clean_seconds.observe(record.duration)
        if record.terminated:
            self.clean_sessions.labels("terminated").inc(record.terminated)
        if record.skipped:
            self.clean_sessions.labels("skipped").inc(record.skipped)

    # --- sampling (once per SAMPLE_INTERVAL) -----------------------------------------

    def sample(self, clients: Iterable[Any]) -> None:
        """Gauges and per-read counters from the open ``clients`` (ClientProtocols)."""
        phases = [0, 0, 0]
        totals = list(self._closed)
        databases: dict[str, int] = dict.fromkeys(self._labels["database"], 0)
        users: dict[str, int] = dict.fromkeys(self._labels["user"], 0)
        for client in clients:
            session = client.session
            if session is None:
                continue
            if client.tls_handshaking:
                phases[1] += 1
            elif session.frontend is None or session.phase is not Phase.RELAY:
                phases[0] += 1
            else:
                phases[2] += 1
            totals[0] += client.bytes_in
            totals[1] += client.server_bytes_in
            state = session.state
            if state is not None:
                totals[2] += state.groups_sent
                totals[3] += state.answering_group + 1  # ReadyForQuery messages (from -1)
            if session.user:
                # Only a logged-in session claims a label: names sent before
                # authentication are anyone's to choose.
                claim = session.login_complete()
                database = self._label("database", session.database, claim)
                databases[database] = databases.get(database, 0) + 1
                user = self._label("user", session.user, claim)
                users[user] = users.get(user, 0) + 1
        for gauge, count in zip(self._phase_gauges, phases, strict=True):
            gauge.set(count)
        for delta, total in zip(self._deltas, totals, strict=True):
            delta.update(total)
        for name, count in databases.items():
            self.by_database.labels(name).set(count)
        for name, count in users.items():
            self.by_user.labels(name).set(count)

    def _label(self, kind: str, name: str, claim: bool) -> str:
        """``name`` as a label value if it has one, or gets one now (``claim``: only
        while fewer than ``label_limit`` have been given), else ``other``."""
        seen = self._labels[kind]
        if name in seen:
            return name
        if claim and len(seen) < self.label_limit:
            seen[name] = None
            return name
        return OTHER


class SessionMetrics:
    """:class:`proxy.events.SessionEvents` feeding :class:`Metrics`."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def refused(self, reason: str) -> None:
        self._metrics.refused_for(reason)

    def upstream_connected(self, seconds: float) -> None:
        self._metrics.upstream_connected(seconds)

    def upstream_failed(self, seconds: float) -> None:
        self._metrics.upstream_failed(seconds)

    def tls_failed(self) -> None:
        self._metrics.tls_failed()


def healthy(registry: CollectorRegistry) -> tuple[bool, str]:
    """(healthy, reason) from the collected values: accepting and upstream reachable."""
    accepting = 0.0
    success = failure = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "pgdp_accepting":
                accepting += sample.value
            elif sample.name == "pgdp_upstream_last_connect_success_timestamp_seconds":
                success = max(success, sample.value)
            elif sample.name == "pgdp_upstream_last_connect_failure_timestamp_seconds":
                failure = max(failure, sample.value)
    if accepting <= 0:
        return False, "not accepting clients (starting or draining)"
    if failure > success:
        return False, "last upstream connect failed"
    return True, "ok"


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, served by a daemon thread.

    ``refresh`` (optional) runs before each answer: in a single process it samples the
    sessions so that a scrape sees current numbers.
    """

    def __init__(
        self,
        address: Address,
        registry: CollectorRegistry,
        *,
        reuse_port: bool = False,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh = refresh
        owner = self
        slots = threading.BoundedSemaphore(HTTP_CONNECTIONS)

        class Handler(http.server.BaseHTTPRequestHandler):
            # An idle or slow client must not hold a thread and a descriptor for ever:
            # descriptors are the proxy's clients' too.
            timeout = HTTP_TIMEOUT

            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes are not logged

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in (address.host or "") else socket.AF_INET

            def server_bind(self) -> None:
                if reuse_port:
                    self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                super().server_bind()

            def handle_error(self, request: Any, client_address: Any) -> None:
                # socketserver prints a multi-line traceback to stderr (the log) for a
                # request that broke its handler (line too long, peer reset): a scraper's
                # failure, not the proxy's, and no way to write into the log.
                pass

            def get_request(self) -> tuple[socket.socket, Any]:
                try:
                    return super().get_request()
                except OSError as exc:
                    # Out of descriptors, the listener stays readable: without a pause
                    # this thread would spin, taking the GIL from the relay's loop.
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        time.sleep(0.1)
                    raise

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):  # busy: close it, spawn no thread
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self._httpd = Server((address.host or "127.0.0.1", address.port), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="pgdp-metrics", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def fileno(self) -> int:
        return self._httpd.fileno()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def close_in_child(self) -> None:
        """In a forked worker: drop the inherited listening socket (the thread is not
        there)."""
        with contextlib.suppress(OSError):
            self._httpd.socket.close()

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            self._send(request, 404, b"not found: try /metrics or /healthz\n", "text/plain")
            return
        if self.refresh is not None:
            with contextlib.suppress(Exception):
                self.refresh()
        if path == "/metrics":
            self._send(request, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        else:
            ok, reason = healthy(self.registry)
            self._send(request, 200 if ok else 503, reason.encode() + b"\n", "text/plain")

    @staticmethod
    def _send(
        request: http.server.BaseHTTPRequestHandler, status: int, body: bytes, kind: str
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
