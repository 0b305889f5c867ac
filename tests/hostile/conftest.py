"""Fixtures for the attacks on a running proxy: the CLEAN CONNECTION helpers of the
end-to-end suite (victims, databases and roles created and dropped per test)."""

from tests.e2e.conftest import make_db, make_role, victims

__all__ = ["make_db", "make_role", "victims"]
