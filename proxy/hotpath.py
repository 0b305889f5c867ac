"""Which build of the session streams runs: compiled, or the interpreted source.

``proxy._streams`` is ``proxy/streams.py`` compiled by Cython at install time (see
``setup.py``). It is used when it exists, was built from the very sources beside it (the
digest it records) and ``PGDP_PURE_PYTHON`` is not set to a non-empty value; otherwise the
interpreted :mod:`proxy.streams` runs. Both builds behave identically (the unit tests run
against each); only their speed differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from . import streams as interpreted
from ._digest import source_digest


def _compiled() -> tuple[ModuleType | None, str]:
    """The compiled module, or None and why it is not used."""
    if os.environ.get("PGDP_PURE_PYTHON"):
        return None, "PGDP_PURE_PYTHON is set"
    try:
        from . import _streams  # type: ignore[attr-defined]
    except ImportError:
        return None, "not built (no C compiler or Cython at install time)"
    try:
        current = source_digest(Path(__file__).parent)
    except OSError:  # installed without its sources: nothing to be stale against
        return _streams, "compiled"
    if getattr(_streams, "BUILT_FROM_DIGEST", None) != current:
        return None, "stale: proxy/streams.py changed since the build (reinstall to rebuild)"
    return _streams, "compiled"


compiled, REASON = _compiled()
"""The compiled module when it is used (else None), and a word on why."""

IMPLEMENTATION = "compiled" if compiled is not None else "interpreted"
_module = compiled if compiled is not None else interpreted

SessionState = _module.SessionState
FrontendStream = _module.FrontendStream
BackendStream = _module.BackendStream
