"""Fixtures for the attacks on a running proxy: the CLEAN CONNECTION helpers of the
end-to-end suite (victims, databases and roles created and dropped per test), a proxy
with an audit file and a raw session through it, and a certificate for proxies that
accept TLS."""

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import ProxyProcess
from tests.e2e.conftest import make_db, make_role, victims
from tests.hostile.replies import connect_raw

__all__ = ["certs", "make_db", "make_role", "victims"]


@pytest.fixture
def audited(start_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> tuple[ProxyProcess, Path]:
    audit = tmp_path / "audit.jsonl"
    return start_proxy("--audit-log", str(audit)), audit


@pytest.fixture
def session(audited: tuple[ProxyProcess, Path]) -> Iterator[socket.socket]:
    proxy, _ = audited
    sock = connect_raw(proxy)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and key for localhost/127.0.0.1 (PEM files)."""
    directory = tmp_path_factory.mktemp("certs")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    paths = {"cert": directory / "cert.pem", "key": directory / "key.pem"}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths
