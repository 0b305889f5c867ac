"""Loader for the table-driven grammar case files in ``tests/grammar/cases``."""

from __future__ import annotations

from pathlib import Path

import pytest

CASES_DIR = Path(__file__).parent / "cases"


def load_cases(filename: str, marker: str) -> list[pytest.param]:
    """Cases of ``filename``: SQL lines closed by a ``-- <marker>: <expectation>`` line.

    Returns ``pytest.param(sql, expectation, id=...)``; the SQL keeps its inner newlines
    but not the one before the marker line.
    """
    params = []
    pending: list[str] = []
    prefix = f"-- {marker}: "
    path = CASES_DIR / filename
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(prefix):
            sql = "\n".join(pending)
            if not sql.strip():
                raise ValueError(f"{path}:{lineno}: expectation without SQL")
            params.append(pytest.param(sql, line[len(prefix) :], id=f"{filename}:{lineno}"))
            pending = []
        elif line.startswith("--#") or (not pending and not line.strip()):
            continue
        else:
            pending.append(line)
    if pending and "\n".join(pending).strip():
        raise ValueError(f"{path}: trailing SQL without expectation")
    return params
