"""Both builds of the session streams: interpreted and, where it was built, compiled.

Test modules that take the ``stream_build`` fixture (``pytestmark =
pytest.mark.usefixtures("stream_build")``) run every test once per build, with their module
globals ``SessionState``, ``FrontendStream`` and ``BackendStream`` bound to that build's
classes. Without a compiled build the compiled runs are skipped (and ``test_hotpath`` fails
if ``PGDP_REQUIRE_COMPILED`` is set, as CI sets it).
"""

from __future__ import annotations

import pytest

import proxy.streams
from proxy import hotpath

_STREAM_CLASSES = ("SessionState", "FrontendStream", "BackendStream")


def _builds() -> list[object]:
    compiled = hotpath.compiled
    skip = pytest.mark.skip(reason=f"compiled streams not used: {hotpath.REASON}")
    return [
        pytest.param(proxy.streams, id="interpreted"),
        pytest.param(compiled, id="compiled", marks=() if compiled is not None else skip),
    ]


@pytest.fixture(params=_builds())
def stream_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    """The streams module under test, its classes bound into the requesting test module."""
    module = request.param
    for name in _STREAM_CLASSES:
        if hasattr(request.module, name):
            monkeypatch.setattr(request.module, name, getattr(module, name))
    return module
