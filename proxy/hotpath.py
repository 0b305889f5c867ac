"""Which build of the hot path runs: compiled, or the interpreted source.

``proxy._streams`` and ``proxy._relay`` are ``proxy/streams.py`` and ``proxy/relay.py``
compiled by Cython at install time (see ``setup.py``). A compiled module is used when it
exists, was built from the very sources beside it (the digest it records) and
``PGDP_PURE_PYTHON`` is not set to a non-empty value; otherwise the interpreted module runs.
Both builds behave identically (the unit tests run against each); only their speed differs.

Import the relay's classes through :func:`build` at run time, not at this module's import:
``proxy.relay`` imports the session, which imports this module.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from . import streams as _interpreted_streams
from ._digest import COMPILED_MODULES, source_digest

_PACKAGE_DIR = Path(__file__).parent
_chosen: dict[str, tuple[ModuleType, ModuleType | None, str]] = {}


def _choose(name: str) -> tuple[ModuleType, ModuleType | None, str]:
    interpreted = importlib.import_module(f"{__package__}.{name}")
    if os.environ.get("PGDP_PURE_PYTHON"):
        return interpreted, None, "PGDP_PURE_PYTHON is set"
    try:
        compiled = importlib.import_module(f"{__package__}._{name}")
    except ImportError:
        return interpreted, None, "not built (no C compiler or Cython at install time)"
    try:
        current = source_digest(_PACKAGE_DIR, name)
    except OSError:  # installed without its sources: nothing to be stale against
        return compiled, compiled, "compiled"
    if getattr(compiled, "BUILT_FROM_DIGEST", None) != current:
        return interpreted, None, f"stale: proxy/{name}.py changed since the build (reinstall)"
    return compiled, compiled, "compiled"


def build(name: str) -> tuple[ModuleType, ModuleType | None, str]:
    """For module ``name`` of :data:`COMPILED_MODULES`: the module in use, the compiled
    module (None when the interpreted one is used) and a word on why."""
    if name not in _chosen:
        _chosen[name] = _choose(name)
    return _chosen[name]


def implementations() -> dict[str, str]:
    """Each module with a compiled build → ``compiled`` or why it is interpreted."""
    return {name: build(name)[2] for name in COMPILED_MODULES}


_streams, compiled, REASON = build("streams")
"""The streams module in use; the compiled one (or None); why."""
assert _streams is compiled or _streams is _interpreted_streams

IMPLEMENTATION = "compiled" if compiled is not None else "interpreted"
"""The build of the streams in use."""

SessionState = _streams.SessionState
FrontendStream = _streams.FrontendStream
BackendStream = _streams.BackendStream
