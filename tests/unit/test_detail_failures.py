"""The give-up rule for details that keep failing: enough attempts and an action that finished long enough ago."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.detail_failures import DetailFailures

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempts", "finished_ago_s", "gives_up"),
    [
        (4, 3600, False),  # too few attempts, however old
        (5, 3600, True),
        (5, 60, False),  # a recent action: a short outage only delays it
        (50, 599, False),
        (5, 600, True),
    ],
)
def test_gives_up_only_after_attempts_and_age(attempts: int, finished_ago_s: float, gives_up: bool) -> None:  # noqa: FBT001 - a parametrized case
    """The relay gives up on a detail only once both the attempt count and the action's age are reached."""
    failures = DetailFailures()
    results = [failures.record("aa_1", now=T0, finished_at=T0 - timedelta(seconds=finished_ago_s)) for _ in range(attempts)]
    assert results[-1] == (attempts, gives_up)
    assert not any(g for _, g in results[:-1])


def test_unreadable_finish_time_counts_from_the_first_failure() -> None:
    """Without an updated_at, the age is measured from the first failure, and a success resets the count."""
    failures = DetailFailures()
    for n in range(5):
        failures.record("aa_1", now=T0 + timedelta(seconds=n), finished_at=None)
    assert failures.record("aa_1", now=T0 + timedelta(seconds=601), finished_at=None) == (6, True)
    assert failures.record("aa_1", now=T0 + timedelta(seconds=602), finished_at=None) == (1, False)
