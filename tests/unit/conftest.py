"""Both builds of the hot path: interpreted and, where it was built, compiled.

Test modules that take the ``stream_build`` fixture (``pytestmark =
pytest.mark.usefixtures("stream_build")``) run every test once per build of
:mod:`proxy.streams`, with their module globals ``SessionState``, ``FrontendStream`` and
``BackendStream`` bound to that build's classes; ``relay_build`` does the same for
:mod:`proxy.relay`'s ``ClientProtocol`` and ``ServerProtocol``. Without a compiled build the
compiled runs are skipped (and ``test_hotpath`` fails if ``PGDP_REQUIRE_COMPILED`` is set,
as CI sets it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from proxy import hotpath


def _builds(name: str) -> list[object]:
    interpreted = importlib.import_module(f"proxy.{name}")
    _, compiled, reason = hotpath.build(name)
    skip = pytest.mark.skip(reason=f"compiled {name} not used: {reason}")
    return [
        pytest.param(interpreted, id="interpreted"),
        pytest.param(compiled, id="compiled", marks=() if compiled is not None else skip),
    ]


def _bind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]):
    module: ModuleType = request.param
    for name in names:
        if hasattr(request.module, name):
            monkeypatch.setattr(request.module, name, getattr(module, name))
    return module


@pytest.fixture(params=_builds("streams"))
def stream_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The streams module under test, its classes bound into the requesting test module."""
    return _bind(request, monkeypatch, ("SessionState", "FrontendStream", "BackendStream"))


@pytest.fixture(params=_builds("relay"))
def relay_build(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The relay module under test, its protocols bound into the requesting test module."""
    return _bind(request, monkeypatch, ("ClientProtocol", "ServerProtocol"))
