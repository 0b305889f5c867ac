"""Unit tests of the I/O-free pieces of the operations features: the JSON log formatter,
the StartupMessage with the client's address, the new options, the audit record's
sessions, label bounding in metrics."""

from __future__ import annotations

import base64
import json
import logging
import struct
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from proxy.appname import with_client_address
from proxy.audit import AuditRecord, AuditTrail, decode_sessions
from proxy.config import ConfigError, load_config
from proxy.logfmt import JsonFormatter, pairs, unquote, value
from proxy.metrics import OTHER, Metrics
from proxy.session import Phase
from proxy.wire import StartupKind, StartupPacket


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pgdp.session", logging.INFO, __file__, 1, message, args, None)
    for key, item in extra.items():
        setattr(record, key, item)
    return record


@pytest.mark.parametrize(
    "text", ["plain", "", "a b", 'q"uote', "x=y", "line\nbreak\r\t", "\x1b[2J\u2028é\U0001f600"]
)
def test_unquote_inverts_value(text: str) -> None:
    assert unquote(value(text)) == text


def test_pairs_and_event() -> None:
    found, event = pairs(f"conn=3 client=1.2.3.4:5 user={value('a b=c')} opened app=x")
    assert found == {"conn": "3", "client": "1.2.3.4:5", "user": "a b=c", "app": "x"}
    assert event == "opened"


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ("conn=1 client=1.2.3.4:5 user=u db=d opened app=x upstream=h:1", "opened"),
        ("conn=1 user=u protocol violation: invalid message length 7", "protocol violation"),
        ("listening on 127.0.0.1:6432, upstream 127.0.0.1:5432", "listening on"),
        (
            "file descriptor limit 1024 (soft limit was 1024, hard limit 4096)",
            "file descriptor limit",
        ),
        ("reload failed, settings unchanged: bad", "reload failed"),
        ("conn=2 TLS handshake failed: [SSL] wrong version", "TLS handshake failed"),
        ("stopping (graceful)", "stopping"),
        ("42", "42"),
    ],
)
def test_json_event_is_the_lines_leading_words(message: str, event: str) -> None:
    assert json.loads(JsonFormatter().format(_record(message)))["event"] == event


def test_json_formatter_one_line_with_fields() -> None:
    hostile = 'evil\n{"level": "error"}\u2028'
    line = JsonFormatter().format(
        _record("conn=1 user=%s db=d closed duration=0.1s", value(hostile))
    )
    assert "\n" not in line and "\u2028" not in line
    record = json.loads(line)
    assert record["user"] == hostile and record["event"] == "closed"
    assert record["level"] == "info" and record["logger"] == "pgdp.session"
    assert record["message"].startswith("conn=1 user=")


def test_json_formatter_takes_structured_fields() -> None:
    line = JsonFormatter().format(
        _record("x", event="clean_connection", fields={"terminated": 2, "sessions": []})
    )
    record = json.loads(line)
    assert record["event"] == "clean_connection" and record["terminated"] == 2


def _startup(**params: str) -> StartupPacket:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return StartupPacket(StartupKind.STARTUP, struct.pack("!II", 8 + len(body), 196608) + body)


def test_application_name_gets_the_client_address() -> None:
    packet = _startup(user="u", database="d", application_name="billing", options="-c x=1")
    out = StartupPacket(StartupKind.STARTUP, with_client_address(packet, "10.0.0.1:5000"))
    assert out.parameters() == {
        "user": "u",
        "database": "d",
        "application_name": "billing - 10.0.0.1:5000",
        "options": "-c x=1",
    }
    assert struct.unpack("!I", out.raw[:4])[0] == len(out.raw)
    bare = StartupPacket(StartupKind.STARTUP, with_client_address(_startup(user="u"), "h:1"))
    assert bare.parameters()["application_name"] == "h:1"
    long = _startup(user="u", application_name="é" * 40)
    name = StartupPacket(
        StartupKind.STARTUP, with_client_address(long, "127.0.0.1:65535")
    ).parameters()["application_name"]
    assert len(name.encode()) <= 63 and name.endswith(" - 127.0.0.1:65535")


def test_application_name_budget_counts_the_servers_cleaning() -> None:
    def name(app: str, address: str = "127.0.0.1:65535") -> bytes:
        packet = _startup(user="u", application_name=app)
        out = StartupPacket(StartupKind.STARTUP, with_client_address(packet, address))
        (value,) = [v for k, v in _raw_parameters(out.raw) if k == b"application_name"]
        return value

    budget = 63 - len(" - 127.0.0.1:65535")
    # Every non-printable-ASCII byte counts 4 (PostgreSQL 16+ shows it as \xNN).
    assert name("é" * 40) == "é".encode() * (budget // 8) + b" - 127.0.0.1:65535"
    assert name("a" + "\U0001f600" * 3) == b"a" + "\U0001f600".encode() * 2 + b" - 127.0.0.1:65535"
    # A character cut in its middle goes whole; a complete last one stays.
    assert name("ab" + "€" * 9)[:-18].decode() == "ab" + "€" * ((budget - 2) // 12)
    assert name("a" * budget) == b"a" * budget + b" - 127.0.0.1:65535"
    assert name("a" * (budget + 1)) == b"a" * budget + b" - 127.0.0.1:65535"


def test_application_name_never_grows_a_packet_past_the_servers_bound() -> None:
    big = _startup(user="u", options="x" * (10_000 - 30))
    assert len(big.raw) <= 10_000
    assert with_client_address(big, "127.0.0.1:65535") == big.raw


def _raw_parameters(raw: bytes) -> list[tuple[bytes, bytes]]:
    items = raw[8:].split(b"\0")
    return [(k, v) for k, v in zip(items[0::2], items[1::2], strict=False) if k]


def test_new_options_and_their_errors() -> None:
    config = load_config(
        [
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9999",
            "--tcp-keepalive-idle",
            "30",
        ],
        {"PGDP_APPLICATION_NAME_ADD_HOST": "on", "PGDP_REUSE_PORT": "off"},
    )
    assert config.log_format == "json" and config.metrics_listen.port == 9999  # type: ignore[union-attr]
    assert config.tcp_keepalive and config.tcp_keepalive_idle == 30
    assert config.application_name_add_host and not config.reuse_port
    assert load_config(["--application-name-add-host"], {}).application_name_add_host
    with pytest.raises(ConfigError, match="tcp-keepalive"):
        load_config(["--tcp-keepalive", "maybe"], {})
    with pytest.raises(ConfigError, match="metrics-listen"):
        load_config(["--metrics-listen", "/tmp/sock"], {})
    with pytest.raises(ConfigError, match="log-format"):
        load_config([], {"PGDP_LOG_FORMAT": "xml"})
    changed = load_config(["--workers", "2", "--log-level", "debug"], {})
    assert changed.needs_restart(load_config([], {})) == ["workers"]


def test_audit_sessions_decoding_is_lenient() -> None:
    entries = [{"pid": 1, "outcome": "terminated", "application_name": "é"}]
    encoded = base64.encodebytes(json.dumps(entries).encode())  # with newlines, as the server
    assert decode_sessions(encoded) == entries
    assert decode_sessions(b"not base64 !!!") == []
    assert decode_sessions(base64.b64encode(b'{"a": 1}')) == []


def test_audit_text_line_is_one_line(tmp_path) -> None:
    record = AuditRecord(
        conn=1,
        client="1.2.3.4:5",
        user="u\nx",
        db="d",
        app="a b",
        statement="CLEAN CONNECTION TO ALL FOR DATABASE d",
        result="ok",
        duration=0.01,
        terminated=1,
        sessions=[{"pid": 9, "application_name": 'x"\n'}],
    )
    text = record.text()
    assert "\n" not in text and "terminated=1" in text and 'app="a b"' in text
    trail = AuditTrail(tmp_path / "audit.jsonl")
    seen: list[AuditRecord] = []
    trail.listeners.append(seen.append)
    trail.emit(record)
    trail.close()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["sessions"][0]["pid"] == 9 and seen == [record]


def _client(
    user: str, database: str, phase: Phase = Phase.RELAY, logged_in: bool = True
) -> SimpleNamespace:
    session = SimpleNamespace(
        user=user,
        database=database,
        phase=phase,
        frontend=object(),
        state=SimpleNamespace(groups_sent=2, answering_group=1),
        login_complete=lambda: logged_in,
    )
    return SimpleNamespace(session=session, tls_handshaking=False, bytes_in=10, server_bytes_in=20)


def test_metrics_sample_bounds_labels_and_counts_deltas() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, label_limit=2)
    clients = [_client("u1", "a"), _client("u2", "b"), _client("u3", "c"), _client("u3", "c")]
    metrics.sample(clients)
    metrics.sample(clients)  # the same totals: counters do not move again
    metrics.session_closed(10, 20, 2, 2)
    metrics.sample(clients[1:])  # one closed: its numbers now come from the closed totals

    def get(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    assert get("pgdp_client_connections_by_database", database="a") == 0
    assert get("pgdp_client_connections_by_database", database="b") == 1
    assert get("pgdp_client_connections_by_database", database=OTHER) == 2
    assert get("pgdp_client_connections", phase="relay", worker="0") == 3
    assert get("pgdp_bytes_total", direction="client_to_server") == 40
    assert get("pgdp_bytes_total", direction="server_to_client") == 80
    assert get("pgdp_message_groups_total", direction="client_to_server") == 8
    assert get("pgdp_message_groups_total", direction="server_to_client") == 8


def test_metrics_labels_are_claimed_by_logged_in_sessions_only() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, label_limit=1)
    metrics.sample([_client("anyone", "chosen", logged_in=False), _client("u", "real")])
    assert registry.get_sample_value("pgdp_client_connections_by_database", {"database": "real"})
    assert registry.get_sample_value("pgdp_client_connections_by_user", {"user": OTHER}) == 1
    assert (
        registry.get_sample_value("pgdp_client_connections_by_database", {"database": "chosen"})
        is None
    )
    # Once a name has its label, sessions still logging in with it use it too.
    metrics.sample([_client("u", "real", logged_in=False)])
    assert (
        registry.get_sample_value("pgdp_client_connections_by_database", {"database": "real"}) == 1
    )
