"""Malformed message lengths through a running proxy, on each build of the streams.

A logged-in client sends a message whose length field is impossible (below 4, above the
largest message, in the upper half of the 32-bit field): the proxy answers FATAL 08P01 and
closes, and the compiled build (the default where it was built) says exactly what the
interpreted one (``PGDP_PURE_PYTHON=1``) says. Its bystanders go on.
"""

from __future__ import annotations

import struct

import pytest

from proxy import hotpath
from tests.conftest import PgServer, ProxyProcess, raw_socket
from tests.rawpg import handshake, read_error_then_close

pytestmark = pytest.mark.skipif(
    hotpath.compiled is None, reason=f"compiled streams not used: {hotpath.REASON}"
)

LENGTHS = [0, 3, 1 << 30, (1 << 31) - 1, 1 << 31, 0xC0000000, 0xFFFFFFFF]


def refusals(proxy: ProxyProcess, user: str, kind: bytes) -> list[tuple[str, str, str]]:
    seen = []
    for length in LENGTHS:
        with raw_socket(proxy.host, proxy.port) as sock:
            handshake(sock, user, "bad-length")
            sock.sendall(kind + struct.pack("!I", length) + b"select 1\0")
            fields = read_error_then_close(sock)
            assert fields is not None, f"length {length}: closed without an error"
            seen.append((fields["S"], fields["C"], fields["M"]))
    return seen


@pytest.mark.parametrize("kind", [b"Q", b"d"], ids=["query", "copydata"])
def test_builds_refuse_bad_lengths_alike(start_proxy, pg: PgServer, kind: bytes) -> None:  # type: ignore[no-untyped-def]
    compiled = start_proxy("--max-message-size", "65536")
    interpreted = start_proxy("--max-message-size", "65536", env={"PGDP_PURE_PYTHON": "1"})
    from_interpreted = refusals(interpreted, pg.user, kind)
    assert all(s == "FATAL" and c == "08P01" for s, c, _ in from_interpreted), from_interpreted
    assert refusals(compiled, pg.user, kind) == from_interpreted
    for proxy in (compiled, interpreted):
        with proxy.connect(autocommit=True) as bystander:
            assert bystander.execute("select 'untouched'").fetchone() == ("untouched",)
