"""Settings at run time, end to end: SIGHUP reload (log level and format, a TLS
certificate swapped under a connected session, limits, CLEAN settings and timeouts,
restart-only settings kept, an invalid file ignored), TCP keepalive on both sockets of a session, ``--application-name-add-host``."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import ssl
import struct
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, raw_socket, wait_until
from tests.rawpg import handshake, read_error_then_close

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _presented_certificate(host: str, port: int) -> bytes:
    """The DER certificate the proxy presents to a new TLS handshake."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _toml(path: Path, **values: object) -> None:
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))


def test_sighup_reloads_level_format_and_certificate(
    start_proxy, pg: PgServer, certs: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, log_level="info", tls_cert=str(certs["cert"]), tls_key=str(certs["key"]))
    proxy = start_proxy("--config", str(config))
    assert _presented_certificate(proxy.host, proxy.port) == _der(certs["cert"])
    session = psycopg.connect(
        proxy.dsn(sslmode="verify-full", sslrootcert=str(certs["ca"])), autocommit=True
    )
    try:
        assert session.execute("select 1").fetchone() == (1,)
        assert session.pgconn.ssl_in_use

        # New certificate, JSON logs, and a setting that needs a restart.
        _toml(
            config,
            log_level="info",
            log_format="json",
            tls_cert=str(certs["cert2"]),
            tls_key=str(certs["key2"]),
            workers=3,
        )
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in proxy.log(), 10, "the first reload")
        assert "reload: workers changed but take(s) effect only on a restart; kept" in proxy.log()
        assert _presented_certificate(proxy.host, proxy.port) == _der(certs["cert2"])
        assert session.execute("select 2").fetchone() == (2,)  # the open session goes on
        with psycopg.connect(
            proxy.dsn(sslmode="verify-full", sslrootcert=str(certs["ca"]), application_name="n1"),
            autocommit=True,
        ) as fresh:
            fresh.execute("select 1")
        opened = wait_until(
            lambda: next((x for x in proxy.log().splitlines() if '"app": "n1"' in x), None),
            10,
            "a JSON line for the new session",
        )
        assert json.loads(opened)["event"] == "opened"  # type: ignore[arg-type]

        # An invalid file changes nothing.
        config.write_text("log_level = \n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed, settings unchanged" in proxy.log(), 10, "the refusal")
        assert _presented_certificate(proxy.host, proxy.port) == _der(certs["cert2"])

        # Level warning: a new session's lines are no longer written.
        _toml(
            config,
            log_level="warning",
            log_format="json",
            tls_cert=str(certs["cert2"]),
            tls_key=str(certs["key2"]),
        )
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: sum("configuration reloaded" in x for x in proxy.log().splitlines()) == 2,
            10,
            "the second reload",
        )
        with psycopg.connect(proxy.dsn(application_name="quiet_one"), autocommit=True) as quiet:
            quiet.execute("select 1")
        with psycopg.connect(proxy.dsn(application_name="n3"), autocommit=True) as last:
            last.execute("select 1")
        assert session.execute("select 3").fetchone() == (3,)
    finally:
        session.close()
    assert proxy.stop() == 0
    log = proxy.log()
    assert "quiet_one" not in log and '"app": "n3"' not in log
    assert "Traceback" not in log


def test_sighup_changes_limits_and_clean_settings(
    start_proxy, pg: PgServer, make_db, victims, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, max_client_conn=5, clean_without_force="idle")
    proxy = start_proxy("--config", str(config))
    db = make_db()
    victims.open("before", pg.dsn(db))
    with proxy.connect() as conn, proxy.connect():  # two clients: under the limit
        conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
    victims.assert_fate({"before"})  # without FORCE: idle sessions go

    _toml(config, max_client_conn=1, clean_without_force="none")
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.log(), 10, "the reload")
    victims.open("after", pg.dsn(db))
    with proxy.connect() as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FOR DATABASE {db}")
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            proxy.connect()
    victims.assert_fate({"before"})  # clean-without-force none: nothing terminated


def test_sighup_changes_timeouts(start_proxy, pg: PgServer, tmp_path: Path) -> None:
    """The login and shutdown timeouts of a reload hold for the connections that follow:
    a silent client is cut off after the new --client-login-timeout (it was 60 s), and
    SIGTERM ends a session still open after the new --shutdown-timeout (it was 60 s)."""
    config = tmp_path / "proxy.toml"
    _toml(config, client_login_timeout=60.0, shutdown_timeout=60.0)
    proxy = start_proxy("--config", str(config))
    _toml(config, client_login_timeout=0.5, shutdown_timeout=0.5)
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.log(), 10, "the reload")

    with raw_socket(proxy.host, proxy.port, timeout=10) as silent:
        fields = read_error_then_close(silent)  # within the socket's 10 s, far below 60
    assert fields is not None and (fields["C"], fields["M"]) == (
        "57014",
        "canceling authentication due to timeout",
    )

    with raw_socket(proxy.host, proxy.port, timeout=10) as session:
        handshake(session, pg.user, "reload-shutdown")
        proxy.process.send_signal(signal.SIGTERM)
        fields = read_error_then_close(session)
    assert fields is not None and fields["C"] == "57P01"
    assert proxy.process.wait(10) == 0


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _json_records(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_sighup_with_workers_reloads_every_worker_and_later_ones(
    start_proxy, pg: PgServer, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    _toml(config, workers=2)
    proxy = start_proxy("--config", str(config))
    supervisor = proxy.process.pid
    wait_until(lambda: len(_children(supervisor)) == 2, 10, "two workers")
    wait_until(lambda: proxy.log().count("listening on") == 2, 10, "both workers listening")
    workers = set(_children(supervisor))

    # An invalid file: one error line (the supervisor's), nothing changes anywhere.
    config.write_text("workers = [\n")
    proxy.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed, settings unchanged" in proxy.log(), 10, "the refusal")

    _toml(config, workers=3, log_format="json", clean_wait_timeout=3)
    proxy.process.send_signal(signal.SIGHUP)

    def reloaded_pids() -> set[int]:
        """The processes that logged a reload (in text, or in JSON: a worker may still
        be reading the file when the test rewrites it, and reload twice)."""
        lines = [x for x in proxy.log().splitlines() if "configuration reloaded" in x]
        found = [re.search(r'\[(\d+)\]|"pid": (\d+)', x) for x in lines]
        return {int(m.group(1) or m.group(2)) for m in found if m}

    wait_until(lambda: reloaded_pids() == workers, 10, "every worker reloaded")
    log = proxy.log()
    assert log.count("reload failed, settings unchanged") == 1
    assert log.count("take(s) effect only on a restart") == 1
    assert "reload: workers changed but take(s) effect only on a restart; kept" in log
    with proxy.connect(application_name="after_reload") as conn:
        conn.execute("select 1")
    wait_until(
        lambda: any(r.get("app") == "after_reload" for r in _json_records(proxy.log())),
        10,
        "a JSON record from a worker",
    )

    # A worker started again later runs with the reloaded settings, not the first ones.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(_children(supervisor)) == 2 and victim not in _children(supervisor),
        10,
        "the worker started again",
    )
    (restarted,) = set(_children(supervisor)) - workers
    listening = wait_until(
        lambda: [
            r
            for r in _json_records(proxy.log())
            if r["pid"] == restarted and r["event"].startswith("listening on")
        ],
        10,
        "the new worker's JSON listening record",
    )
    assert listening
    assert len(_children(supervisor)) == 2  # workers = 3 needs a restart: still two


# --- TCP keepalive ---------------------------------------------------------------------

_SYS_PIDFD_GETFD = 438  # x86_64 and arm64 alike


def _process_socket(pid: int, fd: int) -> socket.socket:
    """A duplicate of descriptor ``fd`` of process ``pid`` (pidfd_getfd), as a socket."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            pytest.skip(f"pidfd_getfd not permitted here: {os.strerror(err)}")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=dup)


def _proxy_sockets(pid: int) -> list[socket.socket]:
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            sock = _process_socket(pid, int(name))
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                found.append(sock)
            else:
                sock.close()
    return found


def _legs(pid: int, client: tuple[str, int], pg: PgServer) -> dict[str, socket.socket]:
    """The proxy's two sockets of one session: towards ``client`` and towards ``pg``."""
    legs: dict[str, socket.socket] = {}
    for sock in _proxy_sockets(pid):
        try:
            peer = sock.getpeername()[:2]
        except OSError:
            sock.close()
            continue
        if peer == client:
            legs["client"] = sock
        elif peer == (pg.host, pg.port) and "server" not in legs:
            legs["server"] = sock
        else:
            sock.close()
    return legs


def _local_address(conn: psycopg.Connection) -> tuple[str, int]:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockname()[:2]


def test_keepalive_on_both_sockets(start_proxy, pg: PgServer) -> None:
    if pg.host.startswith("/"):
        pytest.skip("the server is reached over a Unix socket")
    proxy = start_proxy(
        "--tcp-keepalive-idle", "17", "--tcp-keepalive-interval", "5", "--tcp-keepalive-count", "3"
    )
    with proxy.connect() as conn:
        conn.execute("select 1")
        legs = _legs(proxy.process.pid, _local_address(conn), pg)
        assert set(legs) == {"client", "server"}
        for name, sock in legs.items():
            with sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, name
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 17, name
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5, name
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3, name

    off = start_proxy("--tcp-keepalive", "off")
    with off.connect() as conn:
        conn.execute("select 1")
        legs = _legs(off.process.pid, _local_address(conn), pg)
        assert set(legs) == {"client", "server"}
        for name, sock in legs.items():
            with sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0, name


def test_keepalive_defaults_are_on_with_the_os_timers(start_proxy, pg: PgServer) -> None:
    if pg.host.startswith("/"):
        pytest.skip("the server is reached over a Unix socket")
    proxy = start_proxy()
    idle = int(Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text())
    with proxy.connect() as conn:
        conn.execute("select 1")
        legs = _legs(proxy.process.pid, _local_address(conn), pg)
        assert set(legs) == {"client", "server"}
        for name, sock in legs.items():
            with sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1, name
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle, name


# --- application_name ------------------------------------------------------------------


def test_application_name_add_host(start_proxy, pg: PgServer, admin) -> None:
    proxy = start_proxy("--application-name-add-host")
    with psycopg.connect(proxy.dsn(application_name="billing"), autocommit=True) as conn:
        host, port = _local_address(conn)
        pid = conn.info.backend_pid
        (name,) = admin.execute(
            "select application_name from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        assert name == f"billing - {host}:{port}"
        # What the client set and sees later is its own business (PgBouncer's behaviour).
        conn.execute("set application_name = 'other'")
    plain = start_proxy()
    with psycopg.connect(plain.dsn(application_name="billing"), autocommit=True) as conn:
        (name,) = admin.execute(
            "select application_name from pg_stat_activity where pid = %s",
            (conn.info.backend_pid,),
        ).fetchone()
        assert name == "billing"


@pytest.mark.parametrize(
    "hostile",
    [
        "é" * 40,  # 80 bytes; PostgreSQL 16+ shows each non-ASCII byte as \xNN
        "tab\there\x7f" * 10,  # control characters: \xNN (16+) or ? (up to 15)
        "a" * 200,
        "fake - 6.6.6.6:1",  # a forged suffix stays in front of the real one
        "",
        "日本語のアプリ" * 3 + "\U0001f600",
    ],
    ids=["non-ascii", "control", "long", "forged", "empty", "cjk"],
)
def test_application_name_add_host_with_hostile_names(
    start_proxy, pg: PgServer, admin, hostile: str
) -> None:
    proxy = start_proxy("--application-name-add-host")
    with psycopg.connect(proxy.dsn(), application_name=hostile, autocommit=True) as conn:
        host, port = _local_address(conn)
        (shown, length) = admin.execute(
            "select application_name, octet_length(application_name) from pg_stat_activity"
            " where pid = %s",
            (conn.info.backend_pid,),
        ).fetchone()
    suffix = f" - {host}:{port}"
    assert length <= 63
    if hostile == "":  # libpq sends no empty application_name: the address alone
        assert shown == f"{host}:{port}"
        return
    assert shown.endswith(suffix), shown
    if hostile.isascii() and hostile.isprintable():  # shortened only as much as needed
        kept = shown[: -len(suffix)]
        assert hostile.startswith(kept) and len(kept) == min(len(hostile), 63 - len(suffix))
