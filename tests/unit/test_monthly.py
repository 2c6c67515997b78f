"""The monthly request budget: billing cycles and the idle interval that spends them evenly (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.cadence import LIST_SHARE
from daemon.monthly import Cycle, billing_cycle, counter_for, idle_interval_s, used_in


def at(*parts: int) -> float:
    """Return the epoch seconds of a UTC moment."""
    return datetime(*parts, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "day", "start", "end"),
    [
        (at(2025, 3, 15, 12), 1, at(2025, 3, 1), at(2025, 4, 1)),
        (at(2025, 3, 1), 1, at(2025, 3, 1), at(2025, 4, 1)),  # the first second belongs to the new cycle
        (at(2025, 3, 9), 10, at(2025, 2, 10), at(2025, 3, 10)),
        (at(2025, 1, 5), 28, at(2024, 12, 28), at(2025, 1, 28)),  # across a year
        (at(2025, 12, 30), 28, at(2025, 12, 28), at(2026, 1, 28)),
    ],
)
def test_billing_cycle(now, day, start, end):
    """A billing cycle runs from 00:00 UTC on RELAY_BILLING_CYCLE_DAY to the same day next month."""
    assert billing_cycle(now, cycle_day=day) == Cycle(start=start, end=end)


DAY = 86400.0
APRIL = Cycle(start=at(2025, 4, 1), end=at(2025, 5, 1))  # 30 days


@pytest.mark.parametrize(
    ("budget", "used", "now", "expected"),
    [
        (10_000, 0, APRIL.start, 30 * DAY / (10_000 * LIST_SHARE)),  # 324 s: evenly over the whole cycle
        (10_000, 5_000, APRIL.start + 15 * DAY, 15 * DAY / (5_000 * LIST_SHARE)),  # on track: the same
        (10_000, 8_000, APRIL.start + 15 * DAY, 15 * DAY / (2_000 * LIST_SHARE)),  # a busy fortnight: slower
        (10_000, 1_000, APRIL.start + 15 * DAY, 15 * DAY / (9_000 * LIST_SHARE)),  # a quiet one: faster
        (1_000_000, 0, APRIL.start, 30.0),  # never faster than the fast pace
        (10_000, 10_000, APRIL.start + 29 * DAY, DAY),  # spent: nothing until the next cycle
        (10_000, 12_000, APRIL.end - 10, 30.0),
    ],
)
def test_idle_interval_spends_what_is_left_evenly(budget, used, now, expected):
    """The idle interval spreads the requests left over the time left, keeping a fifth for busy polls and GETs."""
    assert idle_interval_s(budget=budget, used=used, now=now, cycle=APRIL, fast_s=30) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("stored", "used"),
    [(None, 0), ("2025-04-01 1234", 1234), ("2025-03-01 9999", 0), ("2025-04-01 junk", 0), ("", 0)],
)
def test_counter_is_per_cycle(stored, used):
    """The stored counter counts only for its own cycle; a new cycle or a damaged value starts from zero."""
    assert used_in(stored, APRIL) == used
    assert used_in(counter_for(APRIL, 7), APRIL) == 7
