"""Reading a proxy's answers over a raw socket, as the attacks on reply attribution do:
messages summarised as (kind, text), what of a CLEAN's internals leaked to the client,
and the audit file's records."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.conftest import ProxyProcess
from tests.rawpg import error_fields, read_message, read_until_ready, startup_packet


def records(audit: Path) -> list[dict]:
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]


def summary(found: list[dict]) -> list[tuple[str, int]]:
    return [(r["result"], r["terminated"]) for r in found]


def describe(messages: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    out = []
    for kind, body in messages:
        if kind == b"C":
            out.append(("tag", body[:-1].decode()))
        elif kind in (b"E", b"N"):
            fields = error_fields(body)
            out.append(("error" if kind == b"E" else "notice", fields.get("M", "")))
            if "W" in fields:
                out.append(("context", fields["W"]))
        elif kind == b"G":
            out.append(("copy-in", ""))
        elif kind == b"H":
            out.append(("copy-out", ""))
    return out


def replies(sock: socket.socket) -> list[tuple[str, str]]:
    return describe(read_until_ready(sock))


def leaks(answer: list[tuple[str, str]]) -> list[str]:
    """The CLEAN program's INFO markers and PL/pgSQL CONTEXT (COPY's own CONTEXT is fine)."""
    return [
        text
        for kind, text in answer
        if (kind == "context" and "PL/pgSQL" in text) or (kind != "tag" and "pgdp:" in text)
    ]


def read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def read_one(sock: socket.socket) -> tuple[bytes, bytes]:
    msg = read_message(sock)
    assert msg is not None, "connection closed"
    return msg


def connect_raw(proxy: ProxyProcess, app: str = "copy-atk") -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    sock.sendall(startup_packet("postgres", application_name=app))
    read_until_ready(sock)
    return sock
