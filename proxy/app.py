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
import threading

from .audit import AuditTrail
from .clean import CleanConnectionDialect
from .config import RESTART_SETTINGS, Address, Config, ConfigError, load_config
from .embedded import EmbeddedPostgres
from .logfmt import configure_logging, value
from .server import ListenError, ProxyServer
from .tls import client_tls_context, upstream_tls
from .upstream import UpstreamTLS
from .workers import reserve_port, supervise

log = logging.getLogger("pgdp")

FD_RESERVE = 32  # descriptors a process needs besides its clients': loop, listeners, log…


def _event_loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclasses.dataclass(frozen=True)
class _Runtime:
    """What every worker needs: the configuration and what was prepared from it."""

    config: Config
    upstream: Address
    embedded: EmbeddedPostgres | None  # set only where the "ready" banner is printed
    tls: ssl.SSLContext | None
    upstream_tls: UpstreamTLS | None
    fd_limits: FdLimits | None  # set only where they are logged (one process)
    argv: tuple[str, ...] = ()  # the command line, read again on SIGHUP
    base: Config | None = None  # the configuration as loaded (before the port was pinned)
    worker: int = 0
    multiprocess: bool = False  # metrics values go to the supervisor's directory


def run(config: Config, argv: list[str] | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT; start and stop the embedded server if needed.

    ``argv`` is the command line the configuration came from: SIGHUP reads it again, with
    the environment and the config file (default: ``sys.argv[1:]``)."""
    # SIGHUP reloads (installed with the event loop); never let it kill the proxy before.
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
    runtime = _Runtime(
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
            _run_workers(runtime)
        else:
            _run_loop(runtime)
    finally:
        if embedded is not None:
            embedded.stop()


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


def _run_loop(runtime: _Runtime) -> None:
    with asyncio.Runner(loop_factory=_event_loop_factory) as runner:
        runner.run(_serve(runtime))


def _run_workers(runtime: _Runtime) -> None:
    """Fork ``config.workers`` processes sharing one port; the first announces it. With
    ``--metrics-listen`` this process serves the metrics of all of them."""
    from . import metrics as metrics_module  # prometheus_client only when used

    config = runtime.config
    listen = config.listen
    try:
        holder = reserve_port(listen.host, listen.port)  # type: ignore[arg-type]
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    pinned = dataclasses.replace(
        config, listen=dataclasses.replace(listen, port=holder.getsockname()[1])
    )
    directory: str | None = None
    endpoint = None
    if config.metrics_listen is not None:
        directory = metrics_module.use_multiprocess_dir()
        endpoint = _metrics_endpoint(
            config, metrics_module.collecting_registry(), refresh=None, holder=holder
        )

    def work(index: int) -> None:
        holder.close()
        if endpoint is not None:
            endpoint.close_in_child()
        first = index == 0
        _run_loop(
            dataclasses.replace(
                runtime,
                config=pinned,
                embedded=runtime.embedded if first else None,
                fd_limits=runtime.fd_limits if first else None,
                worker=index,
                multiprocess=directory is not None,
            )
        )

    def reload_here() -> None:
        try:
            new = load_config(list(runtime.argv))
        except ConfigError:
            return  # each worker logs why
        configure_logging(new.log_level, new.log_format, workers=True)

    try:
        supervise(config.workers, work, on_exit=metrics_module.worker_exited, on_reload=reload_here)
    finally:
        holder.close()
        if endpoint is not None:
            endpoint.close()
        if directory is not None:
            metrics_module.remove_multiprocess_dir(directory)


def _metrics_endpoint(config: Config, registry, *, refresh, holder=None):  # type: ignore[no-untyped-def]
    """Start the /metrics and /healthz server; ListenError when its address is taken."""
    from .metrics import MetricsServer

    address = config.metrics_listen
    assert address is not None
    try:
        endpoint = MetricsServer(address, registry, reuse_port=config.reuse_port, refresh=refresh)
    except OSError as exc:
        if holder is not None:
            holder.close()
        raise ListenError(f"cannot listen on {address} (metrics): {exc.strerror or exc}") from None
    endpoint.start()
    log.info("metrics on http://%s/metrics and /healthz", endpoint.address)
    return endpoint


async def _serve(runtime: _Runtime) -> None:
    config, upstream, embedded = runtime.config, runtime.upstream, runtime.embedded
    dialect = CleanConnectionDialect(config.clean_wait_timeout, config.clean_check_timeout)
    dialect.audit = AuditTrail(config.audit_log)
    server = ProxyServer(
        config,
        upstream,
        dialect=dialect,
        tls=runtime.tls,
        upstream_tls=runtime.upstream_tls,
    )
    metrics = _attach_metrics(runtime, server, dialect)
    loop = asyncio.get_running_loop()
    endpoint = None
    sampler: asyncio.Task[None] | None = None
    try:
        bound = await server.start()
        if metrics is not None:
            if not runtime.multiprocess:
                endpoint = _metrics_endpoint(
                    config, metrics.registry, refresh=_sampling_on(loop, metrics, server)
                )
            sampler = loop.create_task(_sample_forever(metrics, server))
        server.install_signal_handlers()
        loop.add_signal_handler(signal.SIGHUP, _Reloader(runtime, server, dialect, metrics))
        if runtime.fd_limits is not None:
            log_fd_limits(runtime.fd_limits, config.max_client_conn)
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


def _attach_metrics(runtime: _Runtime, server: ProxyServer, dialect: CleanConnectionDialect):  # type: ignore[no-untyped-def]
    """The process's :class:`~proxy.metrics.Metrics`, wired to the server and the audit;
    None without ``--metrics-listen``."""
    config = runtime.config
    if config.metrics_listen is None:
        return None
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics, SessionMetrics

    registry = None if runtime.multiprocess else CollectorRegistry()
    metrics = Metrics(registry, worker=str(runtime.worker), label_limit=config.metrics_label_limit)
    server.metrics = metrics
    server.events = SessionMetrics(metrics)
    dialect.audit.listeners.append(metrics.clean_connection)
    return metrics


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


class _Reloader:
    """SIGHUP: read the command line, environment and config file again and apply what
    can change at run time (log level and format, TLS certificate and key for new
    handshakes, timeouts, limits, CLEAN settings, audit file, keepalive, application
    name); settings that need a restart are named in one warning and kept. An invalid
    configuration changes nothing and is logged."""

    def __init__(self, runtime: _Runtime, server: ProxyServer, dialect, metrics) -> None:  # type: ignore[no-untyped-def]
        self.runtime, self.server, self.dialect, self.metrics = runtime, server, dialect, metrics
        self.base = runtime.base or runtime.config

    def __call__(self) -> None:
        try:
            new = load_config(list(self.runtime.argv), dict(os.environ))
            tls = client_tls_context(new)
        except ConfigError as exc:
            log.error("reload failed, settings unchanged: %s", value(str(exc)))
            return
        current = self.server.config
        restart = self.base.needs_restart(new)
        if restart:
            log.warning(
                "reload: %s changed but take(s) effect only on a restart; kept",
                ", ".join(restart),
            )
        merged = dataclasses.replace(
            new, **{name: getattr(current, name) for name in RESTART_SETTINGS}
        )
        configure_logging(merged.log_level, merged.log_format, workers=merged.workers > 1)
        self.server.reconfigure(merged, tls)
        self.dialect.wait_seconds = merged.clean_wait_timeout
        self.dialect.check_seconds = merged.clean_check_timeout
        if merged.audit_log != current.audit_log or merged.audit_log is not None:
            self.dialect.audit.reopen(merged.audit_log)  # reopened: log rotation
        if self.metrics is not None:
            self.metrics.label_limit = merged.metrics_label_limit
        log.info(
            "configuration reloaded: log-level %s, log-format %s, tls %s",
            merged.log_level,
            merged.log_format,
            "on" if tls is not None else "off",
        )
