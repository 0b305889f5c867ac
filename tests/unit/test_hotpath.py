"""The choice between the compiled and the interpreted streams (proxy.hotpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import proxy.streams
from proxy import hotpath
from proxy._digest import source_digest

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
    """CI builds the extension (Cython and a C compiler are there): it must be in use."""
    if not os.environ.get("PGDP_REQUIRE_COMPILED"):
        pytest.skip("PGDP_REQUIRE_COMPILED not set")
    assert hotpath.IMPLEMENTATION == "compiled", hotpath.REASON


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
    code = "import proxy.hotpath as h; print(h.IMPLEMENTATION, h.REASON, sep='|')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "PGDP_PURE_PYTHON": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.startswith("interpreted|stale"), out


def test_digest_covers_the_compiled_sources() -> None:
    assert source_digest(Path(proxy.streams.__file__).parent) == source_digest(ROOT / "proxy")
    if hotpath.compiled is not None:
        assert source_digest(ROOT / "proxy") == hotpath.compiled.BUILT_FROM_DIGEST
