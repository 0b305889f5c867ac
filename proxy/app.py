"""Wiring: configuration → (embedded) upstream → listener → run until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import ssl
import sys

from .clean import CleanConnectionDialect
from .config import Address, Config
from .embedded import EmbeddedPostgres
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


def run(config: Config) -> None:
    """Run the proxy until SIGTERM/SIGINT; start and stop the embedded server if needed."""
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
    runtime = _Runtime(config, upstream, embedded, tls, server_tls, fd_limits)
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
    """Fork ``config.workers`` processes sharing one port; the first announces it."""
    listen = runtime.config.listen
    try:
        holder = reserve_port(listen.host, listen.port)  # type: ignore[arg-type]
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    pinned = dataclasses.replace(
        runtime.config, listen=dataclasses.replace(listen, port=holder.getsockname()[1])
    )

    def work(index: int) -> None:
        holder.close()
        first = index == 0
        _run_loop(
            dataclasses.replace(
                runtime,
                config=pinned,
                embedded=runtime.embedded if first else None,
                fd_limits=runtime.fd_limits if first else None,
            )
        )

    try:
        supervise(runtime.config.workers, work)
    finally:
        holder.close()


async def _serve(runtime: _Runtime) -> None:
    config, upstream, embedded = runtime.config, runtime.upstream, runtime.embedded
    server = ProxyServer(
        config,
        upstream,
        dialect=CleanConnectionDialect(
            config.clean_wait_timeout,
            config.clean_check_timeout,
            without_force=config.clean_without_force,
        ),
        tls=runtime.tls,
        upstream_tls=runtime.upstream_tls,
    )
    bound = await server.start()
    server.install_signal_handlers()
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
