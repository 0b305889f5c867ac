"""The supervisor's pause before starting a worker again (:class:`proxy.workers.RestartPolicy`)."""

from __future__ import annotations

from proxy.workers import RestartPolicy


def test_a_worker_that_ran_long_enough_starts_again_at_once() -> None:
    policy = RestartPolicy(first=0.1, longest=10.0, healthy=30.0)
    assert [policy.pause(0, lived=3600.0) for _ in range(5)] == [0.0] * 5


def test_quick_failures_in_a_row_wait_longer_and_longer_up_to_the_cap() -> None:
    policy = RestartPolicy(first=0.1, longest=1.0, healthy=30.0)
    pauses = [policy.pause(0, lived=0.01) for _ in range(7)]
    assert pauses == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_healthy_run_forgives_earlier_quick_failures() -> None:
    policy = RestartPolicy(first=0.1, longest=10.0, healthy=30.0)
    for _ in range(4):
        policy.pause(0, lived=0.5)
    assert policy.pause(0, lived=31.0) == 0.0
    assert policy.pause(0, lived=0.5) == 0.0  # the first quick failure again: at once
    assert policy.pause(0, lived=0.5) == 0.1


def test_workers_are_counted_apart() -> None:
    policy = RestartPolicy(first=0.1, longest=10.0, healthy=30.0)
    for _ in range(3):
        policy.pause(0, lived=0.5)
    assert policy.pause(1, lived=0.5) == 0.0
    assert policy.pause(0, lived=0.5) == 0.4
