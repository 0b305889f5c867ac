"""Build hook: compile the relay's hot path with Cython where this machine can.

``proxy/streams.py`` (typed by ``proxy/streams.pxd``) and ``proxy/relay.py`` (the protocol
callbacks) are compiled as ``proxy._streams`` and ``proxy._relay``, each from a copy that
records its sources' digest; :mod:`proxy.hotpath` loads one only when that digest matches
the sources beside it, so an edited source is never shadowed by a stale build.
The extensions are optional: without a working C compiler (or without Cython) the build
skips them and the interpreted ``streams.py`` runs, so ``pip install -e .`` works anywhere.
Everything else about the package is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
GENERATED = ROOT / "build" / "cython"


def _digest_module():
    spec = importlib.util.spec_from_file_location("_pgdp_digest", ROOT / "proxy" / "_digest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("Cython not available: the interpreted hot path will run")
        return []
    digest = _digest_module()
    package = GENERATED / "proxy"
    shutil.rmtree(GENERATED, ignore_errors=True)
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    extensions = []
    for name, sources in digest.COMPILED_MODULES.items():
        source = (ROOT / "proxy" / sources[0]).read_text(encoding="utf-8")
        stamp = digest.source_digest(ROOT / "proxy", name)
        target = package / f"_{name}.py"
        target.write_text(f"{source}\n\nBUILT_FROM_DIGEST = {stamp!r}\n", encoding="utf-8")
        for extra in sources[1:]:  # the .pxd declaring C types, renamed alike
            shutil.copyfile(ROOT / "proxy" / extra, package / f"_{name}{Path(extra).suffix}")
        extensions.append(Extension(f"proxy._{name}", [str(target.relative_to(ROOT))]))
    compiled = cythonize(
        extensions,
        # C types come from the .pxd files alone: the sources' annotations stay Python's.
        compiler_directives={"language_level": 3, "annotation_typing": False},
        build_dir=str(GENERATED / "c"),
        quiet=True,
    )
    for extension in compiled:
        # No compiler: skipped with a warning, the build goes on. Set on cythonize's
        # results, which are new Extension objects that do not keep the flag.
        extension.optional = True
    return compiled


setup(ext_modules=compiled_extensions())
