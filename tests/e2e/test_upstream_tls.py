"""TLS towards the server (--upstream-sslmode), with a PostgreSQL that has ssl=on.

The embedded PostgreSQL is built without OpenSSL, so these tests use the system
PostgreSQL (skipped where none is installed, or with PROXY_TEST_DSN).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trustme

from proxy.embedded import EmbeddedPostgres, _service_account
from tests.conftest import ProxyLauncher, ProxyProcess

SYSTEM_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
pytestmark = pytest.mark.skipif(
    not SYSTEM_BINS or bool(os.environ.get("PROXY_TEST_DSN")),
    reason="needs a system PostgreSQL built with OpenSSL",
)


class TLSServer:
    def __init__(self, server: EmbeddedPostgres, ca: Path, other_ca: Path, cert: Path, key: Path):
        self.server, self.ca, self.other_ca, self.cert, self.key = server, ca, other_ca, cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    files = tmp_path_factory.mktemp("server-certs")
    files.chmod(0o755)
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    paths = {name: files / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other_ca"])
    issued.cert_chain_pems[0].write_to_path(paths["cert"])
    issued.private_key_pem.write_to_path(paths["key"])
    paths["key"].chmod(0o600)
    account = _service_account()
    if account is not None:  # the server runs as this user and must own its key
        for path in paths.values():
            os.chown(path, account.uid, account.gid)
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg-ssl"),
        bin_dir=SYSTEM_BINS[-1].parent,
        hba_lines=("hostssl all tls_scram 127.0.0.1/32 scram-sha-256",),
        settings={
            "ssl": "on",
            "ssl_cert_file": str(paths["cert"]),
            "ssl_key_file": str(paths["key"]),
            "fsync": "off",
        },
    )
    server.start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("set password_encryption = 'scram-sha-256'")
        conn.execute("create role tls_scram login password 'scram pw'")
    try:
        yield TLSServer(server, paths["ca"], paths["other_ca"], paths["cert"], paths["key"])
    finally:
        server.destroy()


@pytest.fixture
def proxy_to(tls_server: TLSServer, tmp_path: Path) -> Iterator:
    """Factory: a proxy in front of the TLS-enabled server, with extra arguments."""
    launcher = ProxyLauncher(tmp_path)
    upstream = f"{tls_server.server.host}:{tls_server.server.port}"
    yield lambda *args: launcher.start(["--listen", "127.0.0.1:0", "--upstream", upstream, *args])
    launcher.stop_all()


def server_side_ssl(proxy: ProxyProcess, **extra: str) -> bool:
    with psycopg.connect(proxy.dsn(**extra), autocommit=True) as conn:
        return conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[
            0
        ]


@pytest.mark.parametrize("mode", ["prefer", "require"])
def test_encrypts_towards_the_server(proxy_to, mode: str) -> None:
    proxy = proxy_to("--upstream-sslmode", mode)
    assert server_side_ssl(proxy) is True
    assert "(tls)" in proxy.log()


def test_disable_stays_plain(proxy_to) -> None:
    assert server_side_ssl(proxy_to("--upstream-sslmode", "disable")) is False


def test_verify_full_with_the_right_and_the_wrong_ca(proxy_to, tls_server: TLSServer) -> None:
    good = proxy_to(
        "--upstream-sslmode", "verify-full", "--upstream-sslrootcert", str(tls_server.ca)
    )
    assert server_side_ssl(good) is True
    bad = proxy_to(
        "--upstream-sslmode", "verify-full", "--upstream-sslrootcert", str(tls_server.other_ca)
    )
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(bad.dsn())
    assert "certificate verify failed" in str(info.value)
    assert f"{tls_server.server.host}:{tls_server.server.port}" in str(info.value)


def test_scram_through_tls_on_both_sides(proxy_to, tls_server: TLSServer) -> None:
    """Channel binding would bind the client to the proxy's certificate, which the server
    cannot check, so the proxy withdraws SCRAM-SHA-256-PLUS. A client that still *could*
    bind (libpq's default channel_binding=prefer over TLS) says so in its SCRAM header,
    and the server, itself on TLS, rejects that as a downgrade; the header is covered by
    the client's proof, so no proxy can change it. Such clients use channel_binding=disable."""
    proxy = proxy_to(
        "--upstream-sslmode",
        "require",
        "--tls-cert",
        str(tls_server.cert),
        "--tls-key",
        str(tls_server.key),
    )
    dsn = proxy.dsn(user="tls_scram", password="scram pw", sslmode="require")
    with psycopg.connect(dsn + " channel_binding=disable") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("tls_scram",)
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(dsn + " channel_binding=require")  # PLUS is not offered
    with pytest.raises(psycopg.OperationalError, match="channel binding negotiation"):
        psycopg.connect(dsn)  # the server's downgrade protection, as documented
