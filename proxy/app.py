"""Wiring: configuration → (embedded) upstream → listener → run until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .clean import CleanConnectionDialect
from .config import Address, Config
from .embedded import EmbeddedPostgres
from .peers import PeerRegistry, forget_worker
from .runtime import Runtime
from .server import ListenError, ProxyServer
from .tls import client_tls_context, upstream_tls
from .upstream import UpstreamTLS
from .workers import reserve_port, supervise

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
    launch = _Launch(config, upstream, embedded, tls, server_tls, fd_limits)
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
    """Fork ``config.workers`` processes sharing one port; the first announces it."""
    listen = launch.config.listen
    try:
        holder = reserve_port(listen.host, listen.port)  # type: ignore[arg-type]
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    pinned = dataclasses.replace(
        launch.config, listen=dataclasses.replace(listen, port=holder.getsockname()[1])
    )

    def work(index: int) -> None:
        holder.close()
        first = index == 0
        _run_loop(
            dataclasses.replace(
                launch,
                config=pinned,
                embedded=launch.embedded if first else None,
                fd_limits=launch.fd_limits if first else None,
            )
        )

    def exited(worker_pid: int) -> None:
        if launch.peers_dir is not None:
            forget_worker(launch.peers_dir, worker_pid)

    try:
        supervise(launch.config.workers, work, on_exit=exited)
    finally:
        holder.close()


async def _serve(launch: _Launch) -> None:
    config, upstream, embedded = launch.config, launch.upstream, launch.embedded
    server = ProxyServer(
        Runtime(
            config,
            upstream,
            dialect=CleanConnectionDialect(config.clean_wait_timeout, config.clean_check_timeout),
            tls=launch.tls,
            upstream_tls=launch.upstream_tls,
            peers=PeerRegistry(launch.peers_dir),
        )
    )
    bound = await server.start()
    server.install_signal_handlers()
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
