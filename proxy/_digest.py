"""The digest that ties a compiled build of the hot path to its sources.

Kept free of imports from the package: ``setup.py`` loads this file on its own at build
time, and :mod:`proxy.hotpath` at run time; a compiled module is used only when the digest
it was built with equals the digest of the sources beside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

COMPILED_SOURCES = ("streams.py", "streams.pxd")
"""The files, in ``proxy/``, that the compiled module ``proxy._streams`` is built from."""


def source_digest(package_dir: Path) -> str:
    """SHA-256 over the compiled module's sources in ``package_dir``, in order."""
    digest = hashlib.sha256()
    for name in COMPILED_SOURCES:
        digest.update(name.encode() + b"\0")
        digest.update((package_dir / name).read_bytes())
    return digest.hexdigest()
