"""The digests that tie compiled builds of the hot path to their sources.

Kept free of imports from the package: ``setup.py`` loads this file on its own at build
time, and :mod:`proxy.hotpath` at run time; a compiled module is used only when the digest
it was built with equals the digest of the sources beside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

COMPILED_MODULES: dict[str, tuple[str, ...]] = {
    "streams": ("streams.py", "streams.pxd"),
    "relay": ("relay.py",),
}
"""Each module of ``proxy/`` that has a compiled build (``proxy._<name>``), and the files it
is built from."""


def source_digest(package_dir: Path, name: str) -> str:
    """SHA-256 over the sources in ``package_dir`` of module ``name``'s compiled build."""
    digest = hashlib.sha256()
    for filename in COMPILED_MODULES[name]:
        digest.update(filename.encode() + b"\0")
        digest.update((package_dir / filename).read_bytes())
    return digest.hexdigest()
