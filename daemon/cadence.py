"""PURE: how long to wait before the next poll, and what a configuration costs.

Three strategies (RELAY_PACING). ``adaptive``: fast (RELAY_POLL_INTERVAL) while anything
is in flight or changed within the last ``cooldown_s`` (a minute, or two fast intervals);
slow (RELAY_IDLE_POLL_INTERVAL) otherwise. ``progress``: the wait in-flight actions ask
for (near their estimated finish, see :mod:`daemon.progress`), slow otherwise. ``fixed``:
RELAY_POLL_INTERVAL always. Two floors apply on top: the request budget
(polls spread evenly so that list calls use at most ``LIST_SHARE`` of
RELAY_API_BUDGET_PER_HOUR, leaving the rest for GETs of finished actions), and the
project's own rate limit (when ``X-Rate-Limit-Remaining`` falls under ``LOW_REMAINING``
of ``X-Rate-Limit-Limit`` the relay polls at the idle pace, leaving the headroom to the
customer's application).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

LIST_SHARE = 0.8
MIN_COOLDOWN_S = 60.0
LOW_REMAINING = 0.1
HOURS_PER_MONTH = 730.0
PLANS = (("Sandbox", 100, None, None), ("Business", None, 100, 100_000), ("Organization", None, 2000, 300_000))


@dataclass(frozen=True, slots=True)
class Cadence:
    """The poll pacing settings."""

    fast_s: float
    idle_s: float
    budget_per_hour: int | None = None
    pacing: str = "adaptive"  # adaptive | progress | fixed

    @classmethod
    def of(cls, *, pacing: str, fast_s: float, idle_s: float, budget_per_hour: int | None = None) -> Cadence:
        """Return the cadence for a strategy (``fixed`` never slows down: its idle pace is the fast one)."""
        return cls(fast_s=fast_s, idle_s=fast_s if pacing == "fixed" else idle_s, budget_per_hour=budget_per_hour, pacing=pacing)

    def with_idle(self, idle_s: float | None) -> Cadence:
        """Return this cadence with the idle interval a monthly budget chose (``fixed``: every poll, if slower)."""
        if idle_s is None:
            return self
        if self.pacing == "fixed":
            slowest = max(self.fast_s, idle_s)
            return replace(self, fast_s=slowest, idle_s=slowest)
        return replace(self, idle_s=max(idle_s, self.fast_s))

    @property
    def cooldown_s(self) -> float:
        """Return how long the fast pace outlasts the last activity (a follow-up import is common)."""
        return min(self.idle_s, max(2 * self.fast_s, MIN_COOLDOWN_S))

    @property
    def budget_floor_s(self) -> float:
        """Return the shortest interval the budget allows, spreading list calls evenly (0: no budget)."""
        if self.budget_per_hour is None:
            return 0.0
        return 3600.0 / (self.budget_per_hour * LIST_SHARE)


@dataclass(frozen=True, slots=True)
class Decision:
    """The wait before the next poll and why."""

    interval_s: float
    reason: str  # busy | progress | idle | budget | rate_limit


def last_activity(previous_at: float, *, now: float, in_flight: int, transitions: int, first_run: bool) -> float:
    """Return when the relay last saw activity: something in flight, or a change (not the baseline's)."""
    return now if in_flight or (transitions and not first_run) else previous_at


def is_busy(cadence: Cadence, *, now: float, last_activity_at: float) -> bool:
    """Whether the fast pace applies: activity within the cooldown."""
    return now - last_activity_at < cadence.cooldown_s


def next_poll(cadence: Cadence, *, busy: bool, remaining: int | None = None, limit: int | None = None, wanted_s: float | None = None) -> Decision:
    """Decide the wait before the next poll (``wanted_s``: what in-flight actions ask for, progress pacing)."""
    interval, reason = (cadence.fast_s, "busy") if busy else (cadence.idle_s, "idle")
    if wanted_s is not None and wanted_s < interval:
        interval, reason = max(wanted_s, cadence.fast_s), "busy" if wanted_s <= cadence.fast_s else "progress"
    if _running_low(remaining, limit) and cadence.idle_s > interval:
        interval, reason = cadence.idle_s, "rate_limit"
    if cadence.budget_floor_s > interval:
        interval, reason = cadence.budget_floor_s, "budget"
    return Decision(interval_s=interval, reason=reason)


def _running_low(remaining: int | None, limit: int | None) -> bool:
    if remaining is None or not limit:
        return False
    return remaining < limit * LOW_REMAINING


@dataclass(frozen=True, slots=True)
class Cost:
    """What a configuration spends, in requests."""

    idle_per_hour: float
    busy_per_hour: float
    gets_per_hour: float

    def per_month(self, *, busy_hours_per_day: float) -> float:
        """Return the monthly requests with ``busy_hours_per_day`` of imports a day."""
        busy_share = min(max(busy_hours_per_day / 24.0, 0.0), 1.0)
        hourly = busy_share * (self.busy_per_hour + self.gets_per_hour) + (1 - busy_share) * self.idle_per_hour
        return hourly * HOURS_PER_MONTH


def estimate_cost(cadence: Cadence, *, finished_per_busy_hour: float = 4.0) -> Cost:
    """Return requests per hour when idle and when busy (plus one GET per finished action)."""
    idle = next_poll(cadence, busy=False).interval_s
    busy = next_poll(cadence, busy=True).interval_s
    return Cost(idle_per_hour=3600.0 / idle, busy_per_hour=3600.0 / busy, gets_per_hour=finished_per_busy_hour)


def plan_report(cost: Cost, *, busy_hours_per_day: float = 2.0) -> list[str]:
    """Describe the cost against Voucherify's plan limits, one line per plan."""
    monthly = cost.per_month(busy_hours_per_day=busy_hours_per_day)
    peak_minute = (cost.busy_per_hour + cost.gets_per_hour) / 60.0
    peak_hour = cost.busy_per_hour + cost.gets_per_hour
    lines = []
    for name, per_hour, per_minute, per_cycle in PLANS:
        parts = []
        if per_hour:
            parts.append(f"{peak_hour / per_hour:.0%} of {per_hour}/hour at peak")
        if per_minute:
            parts.append(f"{peak_minute / per_minute:.1%} of {per_minute}/minute at peak")
        if per_cycle:
            parts.append(f"{monthly / per_cycle:.1%} of {per_cycle:,}/cycle")
        lines.append(f"{name}: " + ", ".join(parts))
    return lines
