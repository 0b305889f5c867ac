"""Fixtures for the attacks on a running proxy: the CLEAN CONNECTION helpers of the
end-to-end suite (victims, databases and roles created and dropped per test), and a
certificate for proxies that accept TLS."""

from pathlib import Path

import pytest
import trustme

from tests.e2e.conftest import make_db, make_role, victims

__all__ = ["certs", "make_db", "make_role", "victims"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and key for localhost/127.0.0.1 (PEM files)."""
    directory = tmp_path_factory.mktemp("certs")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    paths = {"cert": directory / "cert.pem", "key": directory / "key.pem"}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths
