"""``--metrics-listen``: /metrics scraped and parsed with prometheus_client's parser while
real clients use the proxy in front of a real PostgreSQL; /healthz."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer, wait_until
from tests.e2e.victims import Victims
from tests.ops.conftest import http_get, metrics_address, scrape, value, wait_metric
from tests.rawpg import startup_packet

METRICS = ("--metrics-listen", "127.0.0.1:0")


def test_counters_follow_real_traffic_and_a_real_clean(
    start_proxy, pg: PgServer, make_db, victims: Victims
) -> None:
    proxy = start_proxy(*METRICS)
    address = metrics_address(proxy)
    assert http_get(address, "/healthz") == (200, "ok\n")
    assert http_get(address, "/nope")[0] == 404
    before = scrape(address)
    db = make_db()
    with proxy.connect(dbname=db) as conn:
        for _ in range(5):
            conn.execute("select 1")
        during = wait_metric(
            address, "pgdp_client_connections_by_database", lambda v: v == 1, database=db
        )
        assert value(during, "pgdp_client_connections", phase="relay") >= 1
        assert value(during, "pgdp_client_connections_by_user", user=pg.user) >= 1
    after_queries = wait_metric(
        address, "pgdp_client_connections_by_database", lambda v: v == 0, database=db
    )

    def grew(name: str, samples, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert grew("pgdp_client_connections_accepted_total", after_queries) >= 1
    assert grew("pgdp_upstream_connect_seconds_count", after_queries) >= 1
    assert grew("pgdp_message_groups_total", after_queries, direction="client_to_server") >= 5
    assert grew("pgdp_message_groups_total", after_queries, direction="server_to_client") >= 5
    assert grew("pgdp_bytes_total", after_queries, direction="client_to_server") > 5 * 14
    assert grew("pgdp_bytes_total", after_queries, direction="server_to_client") > 5 * 14

    victims.open("through_proxy", proxy.dsn(db))
    victims.open("direct", pg.dsn(db))
    with proxy.connect() as conn:
        conn.execute(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {db}")
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            conn.execute("CLEAN CONNECTION TO ALL FORCE FOR DATABASE no_such_database_x")
    victims.assert_fate({"through_proxy", "direct"})
    after = wait_metric(address, "pgdp_clean_connection_total", lambda v: v == 1, outcome="3D000")
    assert grew("pgdp_clean_connection_total", after, outcome="ok") == 1
    assert grew("pgdp_clean_connection_seconds_count", after) == 2
    assert grew("pgdp_clean_connection_sessions_total", after, action="terminated") == 2
    assert grew("pgdp_clean_connection_sessions_total", after, action="skipped") == 0


def _raw(proxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=10)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_refusals_by_reason_and_tls_failures(start_proxy, pg: PgServer, tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    cert.private_key_pem.write_to_path(tmp_path / "k.pem")
    proxy = start_proxy(
        *METRICS,
        "--max-client-conn",
        "1",
        "--client-login-timeout",
        "0.5",
        "--tls-cert",
        str(tmp_path / "c.pem"),
        "--tls-key",
        str(tmp_path / "k.pem"),
    )
    address = metrics_address(proxy)

    with _raw(proxy) as silent:  # says nothing: login timeout
        wait_until(lambda: _closed(silent), 10, "the login timeout")
    with _raw(proxy) as bad:  # a startup packet of impossible length
        bad.sendall(struct.pack("!I", 4))
        wait_until(lambda: _closed(bad), 10, "the protocol violation")
    with _raw(proxy) as tls:  # SSLRequest, then garbage instead of a ClientHello
        tls.sendall(struct.pack("!II", 8, 80877103))
        assert tls.recv(1) == b"S"
        tls.sendall(b"\x16\x03\x01\x00\x05hello" * 10)
        wait_until(lambda: _closed(tls), 10, "the failed handshake")
    with (
        proxy.connect(sslmode="disable"),
        pytest.raises(psycopg.OperationalError, match="too many clients"),
    ):
        proxy.connect(sslmode="disable")
    samples = wait_metric(
        address, "pgdp_client_connections_refused_total", lambda v: v == 1, reason="limit"
    )
    refused = "pgdp_client_connections_refused_total"
    assert value(samples, refused, reason="login_timeout") >= 1
    assert value(samples, refused, reason="protocol_violation") == 1
    assert value(samples, refused, reason="upstream_unreachable") == 0
    assert value(samples, "pgdp_tls_handshake_failures_total") == 1

    # A proxy whose server is gone: refused, counted as a connect failure, unhealthy.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    down = start_proxy(*METRICS, upstream=f"127.0.0.1:{closed_port}")
    down_address = metrics_address(down)
    assert http_get(down_address, "/healthz")[0] == 200  # none tried yet
    with pytest.raises(psycopg.OperationalError):
        down.connect()
    samples = scrape(down_address)
    assert value(samples, refused, reason="upstream_unreachable") == 1
    assert value(samples, "pgdp_upstream_connect_failures_total") == 1
    assert http_get(down_address, "/healthz") == (503, "last upstream connect failed\n")


def test_connections_by_phase(start_proxy, pg: PgServer, certs: dict[str, Path]) -> None:
    proxy = start_proxy(*METRICS, "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]))
    address = metrics_address(proxy)
    connections = "pgdp_client_connections"
    with _raw(proxy), _raw(proxy) as handshaking, proxy.connect(sslmode="disable"):
        handshaking.sendall(struct.pack("!II", 8, 80877103))
        assert handshaking.recv(1) == b"S"  # then no ClientHello: the handshake waits
        samples = wait_metric(address, connections, lambda v: v == 1, "tls", phase="tls")
        assert value(samples, connections, phase="startup") == 1
        assert value(samples, connections, phase="relay") == 1
    samples = wait_metric(address, connections, lambda v: v == 0, "all closed")
    assert value(samples, "pgdp_client_connections_accepted_total") == 3


def test_healthz_503_while_draining(start_proxy, pg: PgServer) -> None:
    proxy = start_proxy(*METRICS, "--shutdown-timeout", "60")
    address = metrics_address(proxy)
    conn = proxy.connect()
    try:
        conn.execute("select 1")
        proxy.process.send_signal(signal.SIGTERM)
        wait_until(lambda: http_get(address, "/healthz")[0] == 503, 10, "healthz 503")
        assert "draining" in http_get(address, "/healthz")[1]
        conn.execute("select 1")  # the open session is still served
    finally:
        conn.close()
    assert proxy.process.wait(20) == 0


def test_database_and_user_labels_are_bounded(start_proxy, pg: PgServer, make_db) -> None:
    proxy = start_proxy(*METRICS, "--metrics-label-limit", "1")
    address = metrics_address(proxy)
    first, second, third = make_db(), make_db(), make_db()
    with proxy.connect(dbname=first), proxy.connect(dbname=second), proxy.connect(dbname=third):
        samples = wait_metric(
            address, "pgdp_client_connections_by_database", lambda v: v == 2, database="other"
        )
    labelled = {
        dict(labels)["database"]: count
        for (name, labels), count in samples.items()
        if name == "pgdp_client_connections_by_database"
    }
    # One database has its own label (the first seen), the other two count as "other".
    assert len(labelled) == 2 and labelled["other"] == 2
    (own,) = set(labelled) - {"other"}
    assert own in {first, second, third} and labelled[own] == 1


def test_names_sent_before_login_claim_no_label(start_proxy, pg: PgServer, make_db) -> None:
    """An unauthenticated client chooses its user and database names at will: they count
    as ``other`` until the session is logged in, and cannot take the label slots."""
    if pg.host.startswith("/"):
        pytest.skip("password authentication is configured for TCP clients")
    proxy = start_proxy(*METRICS, "--metrics-label-limit", "1")
    address = metrics_address(proxy)
    db = make_db()
    with _raw(proxy) as waiting:  # asked for its password, never answers
        waiting.sendall(startup_packet("pw_user", "attacker_chosen_db"))
        assert waiting.recv(1) == b"R"
        wait_metric(address, "pgdp_client_connections_by_database", lambda v: v == 1, "counted")
        with proxy.connect(dbname=db):
            samples = wait_metric(
                address, "pgdp_client_connections_by_database", lambda v: v == 1, database=db
            )
    assert value(samples, "pgdp_client_connections_by_database", database="other") == 1
    assert value(samples, "pgdp_client_connections_by_user", user=pg.user) == 1
    assert value(samples, "pgdp_client_connections_by_user", user="other") == 1
    names = {dict(labels).get("database") for (_, labels) in samples} - {None}
    assert "attacker_chosen_db" not in names


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_workers_one_endpoint_sums_all_and_survives_a_restart(start_proxy, pg: PgServer) -> None:
    proxy = start_proxy(*METRICS, "--workers", "2")
    address = metrics_address(proxy)
    wait_until(lambda: len(_children(proxy.process.pid)) == 2, 10, "two workers")
    wait_metric(address, "pgdp_accepting", lambda v: v == 2, "both workers accepting")
    for _ in range(20):
        with proxy.connect() as conn:
            conn.execute("select 1")
    samples = wait_metric(
        address, "pgdp_client_connections_accepted_total", lambda v: v >= 20, "20 accepted"
    )
    accepted = value(samples, "pgdp_client_connections_accepted_total")
    workers = {dict(labels)["worker"] for (name, labels) in samples if name == "pgdp_accepting"}
    assert workers == {"0", "1"}
    wait_metric(address, "pgdp_client_connections", lambda v: v == 0, "every session closed")

    # The worker serving an open session dies: its live gauges must not stay counted.
    held = proxy.connect(application_name="held_session")
    held.execute("select 1")
    opened = wait_until(
        lambda: re.search(r"\[(\d+)\] conn=.* opened app=held_session", proxy.log()),
        10,
        "the held session's line",
    )
    victim = int(opened.group(1))  # type: ignore[union-attr]
    wait_metric(address, "pgdp_client_connections", lambda v: v == 1, "held", phase="relay")
    wait_metric(address, "pgdp_client_connections_by_user", lambda v: v == 1, user=pg.user)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            victim not in _children(proxy.process.pid) and len(_children(proxy.process.pid)) == 2
        ),
        10,
        "the worker restarted",
    )
    held.close()
    samples = wait_metric(address, "pgdp_accepting", lambda v: v == 2, "accepting again")
    assert value(samples, "pgdp_client_connections", phase="relay") == 0
    assert value(samples, "pgdp_client_connections_by_user", user=pg.user) == 0
    assert value(samples, "pgdp_client_connections_accepted_total") >= accepted + 1
    with proxy.connect() as conn:
        conn.execute("select 1")
    wait_metric(
        address,
        "pgdp_client_connections_accepted_total",
        lambda v: v >= accepted + 1,
        "counted after the restart",
    )
