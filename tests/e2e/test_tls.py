"""TLS from clients: SSLRequest answered 'S' and the handshake done by the proxy."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest
import trustme

from tests.conftest import PgServer, ProxyProcess, assert_one_line_failure, run_cli
from tests.rawpg import SSL_REQUEST, error_fields, read_message, startup_packet


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


@pytest.fixture
def tls_proxy(start_proxy, certs: dict[str, Path]) -> ProxyProcess:
    return start_proxy("--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]))


def tls_dsn(proxy: ProxyProcess, certs: dict[str, Path], **extra: str) -> str:
    return proxy.dsn(host="localhost", sslmode="verify-full", sslrootcert=str(certs["ca"]), **extra)


def test_verify_full_and_plain_on_the_same_port(
    tls_proxy: ProxyProcess, certs, pg: PgServer
) -> None:
    with psycopg.connect(tls_dsn(tls_proxy, certs), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 40 + 2").fetchone() == (42,)
        cur = conn.execute("CLEAN CONNECTION TO ALL FOR DATABASE template1")
        assert cur.statusmessage == "CLEAN CONNECTION"
    with psycopg.connect(tls_proxy.dsn(sslmode="disable"), autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    assert "tls=on opened" in tls_proxy.log()


def test_copy_through_tls(tls_proxy: ProxyProcess, certs) -> None:
    payload = b"".join(b"%07d\t%s\n" % (i, b"z" * 90) for i in range(60_000))
    with psycopg.connect(tls_dsn(tls_proxy, certs), autocommit=True) as conn:
        conn.execute("create temp table t(n text, s text)")
        with conn.cursor().copy("copy t from stdin") as copy:
            copy.write(payload)
        received = hashlib.sha256()
        with conn.cursor().copy("copy t to stdout") as copy:
            for chunk in copy:
                received.update(chunk)
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_asyncpg_over_tls(tls_proxy: ProxyProcess, certs, pg: PgServer) -> None:
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    conn = await asyncpg.connect(
        host="localhost", port=tls_proxy.port, user=pg.user, database="postgres", ssl=context
    )
    try:
        assert await conn.fetchval("select $1::int * 2", 21) == 42
    finally:
        await conn.close()


def test_psql_sslmode_require(tls_proxy: ProxyProcess, pg: PgServer) -> None:
    if not shutil.which("psql"):
        pytest.skip("psql not installed")
    result = subprocess.run(
        ["psql", "-X", "-At", "-c", "select 'over tls'", tls_proxy.dsn(sslmode="require")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "over tls"), result.stderr


def test_plaintext_after_ssl_request_is_refused(tls_proxy: ProxyProcess, pg: PgServer) -> None:
    """Bytes pipelined behind an SSLRequest could be injected in clear (CVE-2021-23214)."""
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST + startup_packet(pg.user))
        message = read_message(sock)
        assert message is not None and message[0] == b"E"
        assert error_fields(message[1])["C"] == "08P01"
        assert read_message(sock) is None
    with psycopg.connect(tls_proxy.dsn(sslmode="disable")) as conn:  # the proxy still serves
        assert conn.execute("select 1").fetchone() == (1,)


def test_garbage_instead_of_a_handshake(tls_proxy: ProxyProcess) -> None:
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        sock.sendall(b"\x16\x03\x01" + struct.pack("!H", 5) + b"hello" * 10)
        received = b""
        while chunk := sock.recv(4096):  # at most a TLS alert, then the proxy closes
            received += chunk
        assert len(received) < 100 and not received.startswith(b"E")
    with psycopg.connect(tls_proxy.dsn(sslmode="disable")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_unreadable_certificate_is_one_line(tmp_path: Path, certs) -> None:
    base = ["--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0"]
    missing = run_cli(
        *base, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(certs["key"])
    )
    assert_one_line_failure(missing, "missing.pem")
    assert missing.returncode == 2
    mismatched = run_cli(*base, "--tls-cert", str(certs["ca"]), "--tls-key", str(certs["key"]))
    assert_one_line_failure(mismatched, "tls: cannot load certificate/key")
    assert mismatched.returncode == 2
