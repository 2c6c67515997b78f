"""PURE: the monthly request budget (RELAY_API_BUDGET_PER_MONTH) as an idle interval.

Voucherify counts API calls per billing cycle, which starts on the same day of every
month (RELAY_BILLING_CYCLE_DAY, 00:00 UTC). The relay spends what is left of the
cycle evenly: after every poll the idle interval becomes the time left in the cycle
over the requests left, of which ``cadence.LIST_SHARE`` go to idle polls and the rest
stay for busy polls and the GETs of finished actions. A busy day leaves fewer
requests for the rest of the cycle, so the interval grows; a quiet one shrinks it. Once
the budget is spent there are no idle polls until the next cycle starts (actions
already in flight are still followed: it is a target, RELAY_API_BUDGET_PER_HOUR the cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.cadence import LIST_SHARE


@dataclass(frozen=True, slots=True)
class Cycle:
    """One billing cycle, in epoch seconds."""

    start: float
    end: float

    def key(self) -> str:
        """Return a stable name for the cycle (its start date), for the per-cycle counter."""
        return datetime.fromtimestamp(self.start, tz=UTC).strftime("%Y-%m-%d")


def billing_cycle(now: float, *, cycle_day: int) -> Cycle:
    """Return the billing cycle ``now`` falls in, cycles starting on ``cycle_day`` (1-28) of each month."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    year, month = (moment.year, moment.month) if moment.day >= cycle_day else _shift(moment.year, moment.month, -1)
    start = datetime(year, month, cycle_day, tzinfo=UTC)
    end = datetime(*_shift(year, month, 1), cycle_day, tzinfo=UTC)
    return Cycle(start=start.timestamp(), end=end.timestamp())


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + months
    return index // 12, index % 12 + 1


def idle_interval_s(*, budget: int, used: int, now: float, cycle: Cycle, fast_s: float) -> float:
    """Return the idle interval that spends what is left of ``budget`` evenly until the cycle ends.

    At least ``fast_s``; with nothing left, the wait until the next cycle starts.
    """
    left = budget - used
    remaining_s = max(cycle.end - now, 0.0)
    if left <= 0:
        return max(remaining_s, fast_s)
    return max(remaining_s / (left * LIST_SHARE), fast_s)


def expected_detection_s(idle_s: float) -> float:
    """Return the mean wait before a poll notices an action that started at a random moment (half an idle interval)."""
    return idle_s / 2.0


def used_in(counter: str | None, cycle: Cycle) -> int:
    """Return the requests a stored counter (``"<cycle> <count>"``) holds for ``cycle``; 0 for another cycle or junk."""
    key, _, count = (counter or "").partition(" ")
    return int(count) if key == cycle.key() and count.isdigit() else 0


def counter_for(cycle: Cycle, used: int) -> str:
    """Return the stored form of the per-cycle counter."""
    return f"{cycle.key()} {used}"
