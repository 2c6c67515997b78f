"""Poll pacing and cost estimates (pure)."""

from __future__ import annotations

import pytest

from daemon.cadence import Cadence, estimate_cost, next_poll, plan_report


@pytest.mark.parametrize(
    ("cadence", "busy", "remaining", "limit", "expected"),
    [
        (Cadence(fast_s=30, idle_s=300), True, None, None, (30, "busy")),
        (Cadence(fast_s=30, idle_s=300), False, None, None, (300, "idle")),
        (Cadence(fast_s=30, idle_s=300), True, 5, 100, (300, "rate_limit")),
        (Cadence(fast_s=30, idle_s=300), True, 50, 100, (30, "busy")),
        (Cadence(fast_s=30, idle_s=300, budget_per_hour=100), True, None, None, (45, "budget")),
        (Cadence(fast_s=30, idle_s=300, budget_per_hour=100), False, None, None, (300, "idle")),
        (Cadence(fast_s=30, idle_s=300, budget_per_hour=1000), True, None, None, (30, "busy")),
        (Cadence(fast_s=5, idle_s=60, budget_per_hour=10), False, 1, 100, (450, "budget")),
    ],
)
def test_next_poll(cadence, busy, remaining, limit, expected):
    """Fast when busy, slow when idle or when the project's rate limit runs low, never faster than the budget allows."""
    decision = next_poll(cadence, busy=busy, remaining=remaining, limit=limit)
    assert (decision.interval_s, decision.reason) == pytest.approx(expected)


def test_a_fixed_thirty_second_poll_costs_most_of_a_business_quota():
    """The figure from the issue: 30 s polling all month is about 87,600 requests."""
    cost = estimate_cost(Cadence(fast_s=30, idle_s=30), finished_per_busy_hour=0)
    assert cost.per_month(busy_hours_per_day=0) == pytest.approx(87_600)


def test_adaptive_defaults_cost_a_fraction():
    """30 s busy / 300 s idle with two busy hours a day costs under a fifth of what fixed 30 s polling does."""
    cost = estimate_cost(Cadence(fast_s=30, idle_s=300))
    assert cost.per_month(busy_hours_per_day=2) < 87_600 / 5
    report = plan_report(cost)
    assert report[1].startswith("Business: ")
    assert "of 100,000/cycle" in report[1]
