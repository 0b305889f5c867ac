"""The choice between the compiled and the interpreted streams (proxy.hotpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import proxy.streams
from proxy import hotpath
from proxy._digest import COMPILED_MODULES, source_digest

ROOT = Path(__file__).resolve().parents[2]


def _choice(env: dict[str, str]) -> str:
    code = "import proxy.hotpath as h; print(h.IMPLEMENTATION, h.REASON, sep='|')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_compiled_build_is_used_where_required() -> None:
    """CI builds the extensions (Cython and a C compiler are there): they must be in use."""
    if not os.environ.get("PGDP_REQUIRE_COMPILED"):
        pytest.skip("PGDP_REQUIRE_COMPILED not set")
    assert hotpath.implementations() == dict.fromkeys(COMPILED_MODULES, "compiled")


def test_pure_python_on_request() -> None:
    assert _choice({"PGDP_PURE_PYTHON": "1"}) == "interpreted|PGDP_PURE_PYTHON is set"


def test_session_streams_come_from_the_chosen_build() -> None:
    from proxy.session import Session
    from proxy.wire import StartupParser

    session = Session(client_address="test", max_message_size=1 << 20)
    parser = StartupParser()
    body = b"\x00\x03\x00\x00user\x00u\x00\x00"
    complete = parser.feed((len(body) + 4).to_bytes(4, "big") + body)
    assert complete is not None
    session.on_startup_packet(complete[0])
    assert type(session.frontend) is hotpath.FrontendStream
    assert type(session.backend) is hotpath.BackendStream
    assert type(session.state) is hotpath.SessionState


def test_a_stale_build_is_not_used(tmp_path: Path) -> None:
    """An edited streams.py is never shadowed by an extension built from the old one."""
    if hotpath.compiled is None:
        pytest.skip(f"no compiled build: {hotpath.REASON}")
    package = tmp_path / "proxy"
    package.mkdir()
    for path in (ROOT / "proxy").iterdir():
        if path.is_file():
            (package / path.name).write_bytes(path.read_bytes())
    with (package / "streams.py").open("a") as source:
        source.write("\n# edited after the build\n")
    relay = package / "relay.py"
    relay.write_text(
        relay.read_text().replace("HIGH_WATER = 256 * 1024", "HIGH_WATER = 128 * 1024")
    )
    code = "import proxy.hotpath as h; print(h.IMPLEMENTATION, h.REASON, h.implementations()['relay'], sep='|')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "PGDP_PURE_PYTHON": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    streams, reason, relay_reason = out.split("|")
    assert streams == "interpreted" and reason.startswith("stale"), out
    assert relay_reason.startswith("stale"), out


@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_a_fresh_build_records_its_sources_digest(name: str) -> None:
    assert source_digest(Path(proxy.streams.__file__).parent, name) == source_digest(
        ROOT / "proxy", name
    )
    _, compiled, _ = hotpath.build(name)
    if compiled is not None:
        assert source_digest(ROOT / "proxy", name) == compiled.BUILT_FROM_DIGEST


def test_the_server_accepts_clients_with_the_chosen_relay() -> None:
    from proxy.config import Address, load_config
    from proxy.runtime import Runtime
    from proxy.server import ProxyServer

    config = load_config(["--upstream", "127.0.0.1:5432"], {})
    server = ProxyServer(Runtime(config, Address("127.0.0.1", 5432)))
    assert type(server._new_client()) is hotpath.build("relay")[0].ClientProtocol
