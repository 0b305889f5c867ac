"""Wiring: configuration → (embedded) upstream → listener → run until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from .audit import AuditTrail
from .clean import CleanConnectionDialect
from .config import RESTART_SETTINGS, Address, Config, ConfigError, load_config
from .embedded import EmbeddedPostgres
from .logfmt import configure_logging, value
from .peers import PeerRegistry, forget_worker
from .runtime import Runtime
from .server import ListenError, ProxyServer
from .tls import client_tls_context, upstream_tls
from .upstream import UpstreamTLS
from .workers import Inbox, reserve_port, supervise

log = logging.getLogger("pgdp")

FD_RESERVE = 32  # descriptors a process needs besides its clients': loop, listeners, log…


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where it is installed (every POSIX install), asyncio's otherwise: for
    ``asyncio.Runner(loop_factory=...)``, the runner API (no event loop policy)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop
    return uvloop.new_event_loop


@dataclasses.dataclass(frozen=True)
class _Launch:
    """What every worker needs: the configuration and what was prepared from it."""

    config: Config
    upstream: Address
    embedded: EmbeddedPostgres | None  # set only where the "ready" banner is printed
    tls: ssl.SSLContext | None
    upstream_tls: UpstreamTLS | None
    fd_limits: FdLimits | None  # set only where they are logged (one process)
    peers_dir: Path | None = None  # the peer registry the workers share
    argv: tuple[str, ...] = ()  # the command line, read again on SIGHUP
    base: Config | None = None  # the configuration as loaded (before the port was pinned)
    worker: int = 0
    multiprocess: bool = False  # metrics values go to the supervisor's directory
    inbox: Inbox | None = None  # a worker: the settings the supervisor accepted on SIGHUP


def run(config: Config, argv: list[str] | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT; start and stop the embedded server if needed.

    ``argv`` is the command line the configuration came from: SIGHUP reads it again, with
    the environment and the config file (default: ``sys.argv[1:]``)."""
    # SIGHUP reloads (handled once the event loop runs); it must never kill the proxy.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Fail on a bad certificate before starting anything.
    tls = client_tls_context(config)
    fd_limits = raise_fd_limit()
    server_tls = upstream_tls(config)
    embedded: EmbeddedPostgres | None = None
    upstream = config.upstream
    if upstream is None:
        embedded = EmbeddedPostgres(config.data_dir / "pgdata")
        log.info("starting embedded PostgreSQL in %s", embedded.datadir)
        embedded.start()
        upstream = Address(host=embedded.host, port=embedded.port)
        server_tls = None  # a local server built without TLS: skip the SSLRequest round trip
    launch = _Launch(
        config,
        upstream,
        embedded,
        tls,
        server_tls,
        fd_limits,
        argv=tuple(sys.argv[1:] if argv is None else argv),
        base=config,
    )
    try:
        if config.workers > 1 and config.listen.host:
            with tempfile.TemporaryDirectory(prefix="pgdp-peers-", dir=_shm()) as peers:
                _run_workers(dataclasses.replace(launch, peers_dir=Path(peers)))
        else:
            _run_loop(launch)
    finally:
        if embedded is not None:
            embedded.stop()


def _shm() -> str | None:
    """A memory-backed directory for the peer registry where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclasses.dataclass(frozen=True)
class FdLimits:
    """RLIMIT_NOFILE as found (``soft``, ``hard``) and the soft ``limit`` now in force."""

    soft: int
    hard: int
    limit: int


def raise_fd_limit() -> FdLimits:
    """Raise the soft RLIMIT_NOFILE to the hard limit (workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):  # reported below: limit unchanged
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            limit = hard
    return FdLimits(soft, hard, limit)


def log_fd_limits(limits: FdLimits, max_client_conn: int) -> None:
    """One info line with the limits; a warning when the limit cannot hold
    ``max_client_conn`` clients, two descriptors each (the client's and its server's)."""
    log.info(
        "file descriptor limit %s (soft limit was %s, hard limit %s)",
        _count(limits.limit),
        _count(limits.soft),
        _count(limits.hard),
    )
    limit = limits.limit
    if limit != resource.RLIM_INFINITY and limit < 2 * max_client_conn + FD_RESERVE:
        log.warning(
            "file descriptor limit %d allows about %d clients per process, fewer than "
            "max-client-conn %d: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
            limit,
            max(0, (limit - FD_RESERVE) // 2),
            max_client_conn,
        )


def _count(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _run_loop(launch: _Launch) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(launch))


def _run_workers(launch: _Launch) -> None:
    """Fork ``config.workers`` processes sharing one port; the first announces it. With
    ``--metrics-listen`` this process serves the metrics of all of them."""
    from . import metrics as metrics_module  # prometheus_client only when used

    listen = launch.config.listen
    try:
        holder = reserve_port(listen.host, listen.port)  # type: ignore[arg-type]
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    pinned = dataclasses.replace(
        launch.config, listen=dataclasses.replace(listen, port=holder.getsockname()[1])
    )

    directory: str | None = None
    endpoint = None
    if launch.config.metrics_listen is not None:
        directory = metrics_module.use_multiprocess_dir()
        try:
            endpoint = _metrics_endpoint(launch.config, metrics_module.collecting_registry())
        except ListenError:
            holder.close()
            metrics_module.remove_multiprocess_dir(directory)
            raise

    # What a worker is started with; a reload in this process updates it, so that a
    # worker started again after a SIGHUP runs with the reloaded settings.
    current = dataclasses.replace(launch, config=pinned)

    def work(index: int, inbox: Inbox) -> None:
        holder.close()
        if endpoint is not None:
            endpoint.close_in_child()
        first = index == 0
        _run_loop(
            dataclasses.replace(
                current,
                embedded=launch.embedded if first else None,
                fd_limits=launch.fd_limits if first else None,
                worker=index,
                multiprocess=directory is not None,
                inbox=inbox,
            )
        )

    def exited(worker_pid: int) -> None:
        if launch.peers_dir is not None:
            forget_worker(launch.peers_dir, worker_pid)
        metrics_module.worker_exited(worker_pid)

    def reload_here() -> Config | None:
        """SIGHUP in the supervisor: the settings are read and checked here, once, and
        the problems reported; what it accepts is sent to every worker (see
        :mod:`proxy.workers`), and workers started from now on get it. None: refused,
        nothing changes anywhere."""
        nonlocal current
        reloaded = reload_config(current, report=True)
        if reloaded is None:
            return None
        config, tls = reloaded
        configure_logging(config.log_level, config.log_format, workers=True)
        current = dataclasses.replace(current, config=config, tls=tls)
        return config

    try:
        supervise(launch.config.workers, work, on_exit=exited, on_reload=reload_here)
    finally:
        holder.close()
        if endpoint is not None:
            endpoint.close()
        if directory is not None:
            metrics_module.remove_multiprocess_dir(directory)


def _metrics_endpoint(config: Config, registry, refresh=None):  # type: ignore[no-untyped-def]
    """Start the /metrics and /healthz server; ListenError when its address is taken."""
    from .metrics import MetricsServer

    address = config.metrics_listen
    assert address is not None
    try:
        endpoint = MetricsServer(address, registry, reuse_port=config.reuse_port, refresh=refresh)
    except OSError as exc:
        raise ListenError(f"cannot listen on {address} (metrics): {exc.strerror or exc}") from None
    endpoint.start()
    log.info("metrics on http://%s/metrics and /healthz", endpoint.address)
    return endpoint


async def _serve(launch: _Launch) -> None:
    config, upstream, embedded = launch.config, launch.upstream, launch.embedded
    peers = PeerRegistry(launch.peers_dir)
    dialect = CleanConnectionDialect(
        config.clean_wait_timeout,
        config.clean_check_timeout,
        without_force=config.clean_without_force,
        peers=peers.snapshot,  # EXPLAIN and the audit show the real clients of every worker
    )
    dialect.audit = AuditTrail(config.audit_log, peers)
    metrics = _make_metrics(launch, dialect)
    server = ProxyServer(
        Runtime(
            config,
            upstream,
            dialect=dialect,
            tls=launch.tls,
            upstream_tls=launch.upstream_tls,
            peers=peers,
            events=_session_events(metrics),
        )
    )
    server.metrics = metrics
    loop = asyncio.get_running_loop()
    endpoint = None
    sampler: asyncio.Task[None] | None = None
    try:
        bound = await server.start()
        if metrics is not None:
            if not launch.multiprocess:
                endpoint = _metrics_endpoint(
                    config, metrics.registry, refresh=_sampling_on(loop, metrics, server)
                )
            sampler = loop.create_task(_sample_forever(metrics, server))
        server.install_signal_handlers()
        reloader = _Reloader(launch, server, dialect, metrics)
        if launch.inbox is not None:  # a worker: the supervisor handles SIGHUP
            loop.add_reader(launch.inbox.fileno(), reloader.from_supervisor)
        else:
            loop.add_signal_handler(signal.SIGHUP, reloader)
        if launch.fd_limits is not None:
            log_fd_limits(launch.fd_limits, config.max_client_conn)
        for address in bound:
            log.info("listening on %s, upstream %s", address, upstream)
        if embedded is not None and config.listen.host:
            port = bound[0].rpartition(":")[2]
            print(
                f"pg-dialect-proxy is ready (embedded PostgreSQL, superuser {embedded.superuser}).\n"
                f"Connect with:  psql -h {config.listen.host} -p {port} -U {embedded.superuser} postgres",
                file=sys.stderr,
                flush=True,
            )
        await server.serve()
    finally:
        if sampler is not None:
            sampler.cancel()
        if metrics is not None:
            metrics.sample(server.clients)
        if endpoint is not None:
            endpoint.close()
        dialect.audit.close()


def _make_metrics(launch: _Launch, dialect: CleanConnectionDialect):  # type: ignore[no-untyped-def]
    """This process's :class:`~proxy.metrics.Metrics` (fed by the audit trail too); None
    without ``--metrics-listen``."""
    config = launch.config
    if config.metrics_listen is None:
        return None
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics

    registry = None if launch.multiprocess else CollectorRegistry()
    metrics = Metrics(registry, worker=str(launch.worker), label_limit=config.metrics_label_limit)
    dialect.audit.listeners.append(metrics.clean_connection)
    return metrics


def _session_events(metrics):  # type: ignore[no-untyped-def]
    from .events import NO_EVENTS

    if metrics is None:
        return NO_EVENTS
    from .metrics import SessionMetrics

    return SessionMetrics(metrics)


async def _sample_forever(metrics, server: ProxyServer) -> None:  # type: ignore[no-untyped-def]
    from .metrics import SAMPLE_INTERVAL

    while True:
        metrics.sample(server.clients)
        await asyncio.sleep(SAMPLE_INTERVAL)


def _sampling_on(loop: asyncio.AbstractEventLoop, metrics, server: ProxyServer):  # type: ignore[no-untyped-def]
    """A function the metrics thread calls before answering: sample on the loop's thread
    (the sessions are the loop's) and wait for it, at most a second."""

    def refresh() -> None:
        done = threading.Event()

        def sample() -> None:
            try:
                metrics.sample(server.clients)
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(sample)
        except RuntimeError:  # the loop is closed: the values stay as last sampled
            return
        done.wait(1.0)

    return refresh


def reload_config(launch: _Launch, *, report: bool) -> tuple[Config, ssl.SSLContext | None] | None:
    """SIGHUP: the command line, environment and config file read again, with the TLS
    context of the new certificate; None when they are invalid (logged, when
    ``report``). Settings that need a restart keep the values ``launch`` runs with and,
    when ``report``, are named in one warning line."""
    try:
        new = load_config(list(launch.argv), dict(os.environ))
        tls = client_tls_context(new)
    except ConfigError as exc:
        (log.error if report else log.debug)(
            "reload failed, settings unchanged: %s", value(str(exc))
        )
        return None
    except Exception as exc:  # never out of a signal handler: the proxy must stay up
        (log.error if report else log.debug)(
            "reload failed, settings unchanged: %s: %s", type(exc).__name__, value(str(exc))
        )
        return None
    restart = (launch.base or launch.config).needs_restart(new)
    if restart and report:
        log.warning(
            "reload: %s changed but take(s) effect only on a restart; kept", ", ".join(restart)
        )
    current = launch.config
    merged = dataclasses.replace(new, **{name: getattr(current, name) for name in RESTART_SETTINGS})
    return merged, tls


class _Reloader:
    """Applies reloaded settings: log level and format, TLS certificate and key for new
    handshakes, timeouts, limits, CLEAN settings, audit file (reopened: log rotation),
    keepalive, application name, for the sessions that start from now on.

    Called on SIGHUP in a single process, it reads the command line, environment and
    config file again; settings that need a restart are named in one warning and kept,
    an invalid configuration changes nothing and is logged. In a worker,
    :meth:`from_supervisor` applies what the supervisor read, checked and reported."""

    def __init__(self, launch: _Launch, server: ProxyServer, dialect, metrics) -> None:  # type: ignore[no-untyped-def]
        self.launch, self.server, self.dialect, self.metrics = launch, server, dialect, metrics

    def __call__(self) -> None:
        reloaded = reload_config(
            dataclasses.replace(self.launch, config=self.server.runtime.config), report=True
        )
        if reloaded is not None:
            self.apply(*reloaded)

    def from_supervisor(self) -> None:
        """The worker's inbox is readable: apply the last settings the supervisor sent."""
        inbox = self.launch.inbox
        assert inbox is not None
        config = inbox.latest()
        if inbox.closed:  # the supervisor is gone: no reload, no restart; stop serving
            asyncio.get_running_loop().remove_reader(inbox.fileno())
            inbox.abandon()
            log.warning("the supervisor is gone: stopping")
            self.server.request_stop(True)
            return
        if not isinstance(config, Config):
            return
        try:
            # The certificate files are read here again (the supervisor read them too):
            # replaced atomically, as certificate tools do, they are the ones it checked.
            tls = client_tls_context(config)
        except ConfigError as exc:
            log.error("reload failed, settings unchanged: %s", value(str(exc)))
            return
        self.apply(config, tls)

    def apply(self, merged: Config, tls: ssl.SSLContext | None) -> None:
        runtime = self.server.runtime
        # Said in the old format and level: the last line before they change.
        log.info(
            "configuration reloaded: log-level %s, log-format %s, tls %s",
            merged.log_level,
            merged.log_format,
            "on" if tls is not None else "off",
        )
        configure_logging(merged.log_level, merged.log_format, workers=merged.workers > 1)
        self.server.reconfigure(dataclasses.replace(runtime, config=merged, tls=tls))
        self.dialect.wait_seconds = merged.clean_wait_timeout
        self.dialect.check_seconds = merged.clean_check_timeout
        self.dialect.without_force = merged.clean_without_force
        self.dialect.audit.reopen(merged.audit_log)  # reopened: log rotation
        if self.metrics is not None:
            self.metrics.label_limit = merged.metrics_label_limit
