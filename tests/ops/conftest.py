"""Fixtures and helpers for the operations tests: proxies serving metrics, scrapes parsed
with prometheus_client's own text parser, and the CLEAN CONNECTION helpers of the
end-to-end suite."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyProcess, wait_until
from tests.e2e.conftest import make_db, make_role, victims

__all__ = ["make_db", "make_role", "victims"]

# The proxy's own addresses only: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def metrics_address(proxy: ProxyProcess) -> str:
    """``host:port`` of the proxy's metrics endpoint, from its log."""
    found = wait_until(
        lambda: re.search(r"metrics on http://([\d.]+:\d+)/metrics", proxy.log()),
        10,
        "the metrics line",
    )
    return found.group(1)  # type: ignore[union-attr]


def http_get(address: str, path: str) -> tuple[int, str]:
    try:
        with _OPENER.open(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's text parser, keyed by
    (name, sorted labels)."""
    status, text = http_get(address, "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def wait_metric(
    address: str,
    name: str,
    predicate: Callable[[float], bool],
    what: str = "",
    timeout: float = 10,
    **labels: str,
) -> Samples:
    """Scrape until ``predicate(value(name, labels))`` holds; return that scrape."""
    found: list[Samples] = []

    def check() -> bool:
        samples = scrape(address)
        found[:] = [samples]
        return predicate(value(samples, name, **labels))

    wait_until(check, timeout, what or f"{name}{labels}")
    return found[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two certificates for localhost/127.0.0.1 from one CA (PEM files): ``cert``/``key``
    and ``cert2``/``key2``, and the CA's ``ca``."""
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    paths = {"ca": directory / "ca.pem"}
    ca.cert_pem.write_to_path(paths["ca"])
    for suffix in ("", "2"):
        issued = ca.issue_cert("localhost", "127.0.0.1")
        paths["cert" + suffix] = directory / f"cert{suffix}.pem"
        paths["key" + suffix] = directory / f"key{suffix}.pem"
        issued.cert_chain_pems[0].write_to_path(paths["cert" + suffix])
        issued.private_key_pem.write_to_path(paths["key" + suffix])
    return paths
