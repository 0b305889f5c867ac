"""Wiring: configuration → (embedded) upstream → listener → run until a signal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
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


def run(config: Config) -> None:
    """Run the proxy until SIGTERM/SIGINT; start and stop the embedded server if needed."""
    # Fail on a bad certificate before starting anything.
    tls = client_tls_context(config)
    server_tls = upstream_tls(config)
    embedded: EmbeddedPostgres | None = None
    upstream = config.upstream
    if upstream is None:
        embedded = EmbeddedPostgres(config.data_dir / "pgdata")
        log.info("starting embedded PostgreSQL in %s", embedded.datadir)
        embedded.start()
        upstream = Address(host=embedded.host, port=embedded.port)
        server_tls = None  # a local server built without TLS: skip the SSLRequest round trip
    runtime = _Runtime(config, upstream, embedded, tls, server_tls)
    try:
        if config.workers > 1 and config.listen.host:
            _run_workers(runtime)
        else:
            _run_loop(runtime)
    finally:
        if embedded is not None:
            embedded.stop()


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
        embedded = runtime.embedded if index == 0 else None
        _run_loop(dataclasses.replace(runtime, config=pinned, embedded=embedded))

    try:
        supervise(runtime.config.workers, work)
    finally:
        holder.close()


async def _serve(runtime: _Runtime) -> None:
    config, upstream, embedded = runtime.config, runtime.upstream, runtime.embedded
    server = ProxyServer(
        config,
        upstream,
        dialect=CleanConnectionDialect(config.clean_wait_timeout, config.clean_check_timeout),
        tls=runtime.tls,
        upstream_tls=runtime.upstream_tls,
    )
    bound = await server.start()
    server.install_signal_handlers()
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
