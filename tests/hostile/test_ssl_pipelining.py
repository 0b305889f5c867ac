"""Bytes pipelined behind an SSLRequest or GSSENCRequest that the proxy answers ``N``.

They were sent before the client could read the answer, so in clear whatever it would
be, and a man in the middle may have put them there: PostgreSQL refuses them (the bytes it
has buffered with the request, ``pq_buffer_has_data``) and so does the proxy. A client
that waits for the answer, as every real one does, is served.
"""

from __future__ import annotations

import pytest

from tests.conftest import PgServer, ProxyProcess, raw_socket
from tests.rawpg import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    handshake,
    query_message,
    read_error_then_close,
    read_until_ready,
    startup_packet,
)

DETAIL = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)
REQUESTS = {
    "ssl": (SSL_REQUEST, "received unencrypted data after SSL request"),
    "gssenc": (GSSENC_REQUEST, "received unencrypted data after GSSAPI encryption request"),
}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_startup_pipelined_behind_the_request_is_refused(
    proxy: ProxyProcess, pg: PgServer, kind: str
) -> None:
    request, message = REQUESTS[kind]
    with raw_socket(proxy.host, proxy.port) as sock:
        sock.sendall(request + startup_packet(pg.user, application_name="pipelined"))
        assert sock.recv(1) == b"N"
        fields = read_error_then_close(sock)
    assert fields is not None, "closed without an ErrorResponse"
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", message)
    assert fields["D"] == DETAIL
    assert "app=pipelined" not in proxy.log()  # no server connection was opened


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_startup_after_reading_the_answer_is_served(
    proxy: ProxyProcess, pg: PgServer, kind: str
) -> None:
    request, _ = REQUESTS[kind]
    with raw_socket(proxy.host, proxy.port) as sock:
        sock.sendall(request)
        assert sock.recv(1) == b"N"
        handshake(sock, pg.user, "waited")
        sock.sendall(query_message("select 1"))
        assert [kind for kind, _ in read_until_ready(sock)] == [b"T", b"D", b"C", b"Z"]
