"""Micro-benchmarks of the grammar package; prints a table (no assertions).

Run: ``.venv/bin/python bench/bench_grammar.py``
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grammar import find_clean_statements, might_contain_clean, split_statements

QUERY_PLAIN = (
    b"SELECT id, name, email FROM accounts WHERE tenant_id = 42 AND status = 'active' "
    b"ORDER BY id LIMIT 10\x00"
)
QUERY_WITH_WORD = (
    b"CLEAN CONNECTION TO ALL FORCE FOR DATABASE appdb TO USER app_user; SELECT 1 AS ok, 2\x00"
)
CLEAN = "CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE appdb TO USER app_user;"
_SCRIPT_PARTS = [
    "INSERT INTO t (id, note) VALUES (1, 'hello; world');",
    "UPDATE accounts SET balance = balance - 10 WHERE id = 7; -- debit",
    "SELECT $$dollar ; quoted$$, E'esc\\'aped' FROM pg_class /* nested /* c */ */;",
    "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a; END;",
    "clean connection to node (n1, n2) for database appdb;",
]
SCRIPT = ""
while len(SCRIPT) < 10_000:
    SCRIPT += "\n".join(_SCRIPT_PARTS) + "\n"
SCRIPT_NON_ASCII = SCRIPT.replace("hello", "héllo")


def measure(func: Callable[[], object]) -> float:
    """Best per-call time in seconds over 5 repeats."""
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number


def main() -> None:
    assert len(QUERY_PLAIN) in range(90, 111) and not might_contain_clean(QUERY_PLAIN)
    assert might_contain_clean(QUERY_WITH_WORD)
    assert find_clean_statements(CLEAN)
    rows = [
        ("might_contain_clean, 100 B query without the word", lambda: might_contain_clean(QUERY_PLAIN)),
        ("might_contain_clean, query with CLEAN CONNECTION", lambda: might_contain_clean(QUERY_WITH_WORD)),
        ("split_statements, one CLEAN statement", lambda: split_statements(CLEAN)),
        ("find_clean_statements, one CLEAN statement", lambda: find_clean_statements(CLEAN)),
        (f"split_statements, {len(SCRIPT)} char script", lambda: split_statements(SCRIPT)),
        (f"find_clean_statements, {len(SCRIPT)} char script", lambda: find_clean_statements(SCRIPT)),
        ("split_statements, same script with non-ASCII", lambda: split_statements(SCRIPT_NON_ASCII)),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'per call':>12}")
    print(f"{'-' * width}  {'-' * 12}")
    for name, func in rows:
        seconds = measure(func)
        shown = f"{seconds * 1e9:.0f} ns" if seconds < 1e-6 else f"{seconds * 1e6:.1f} µs"
        print(f"{name:<{width}}  {shown:>12}")


if __name__ == "__main__":
    main()
