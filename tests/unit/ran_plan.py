"""A CLEAN plan for the stream tests, whose traces carry no program INFO."""

from __future__ import annotations

from proxy.clean import CleanPlan, CleanRun


class RanPlan(CleanPlan):
    """A CLEAN plan whose program is taken to have run (its first INFO is not in these
    traces): the stream's attribution is under test, not the run's own checks
    (tests/unit/test_clean_rewrite.py has those)."""

    def start(self) -> CleanRun:
        run = super().start()
        run.ran = True
        return run
