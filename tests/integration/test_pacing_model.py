"""bench.pacing_model chose the pacing constants: it must agree with the real Poller on the simulated day."""

from __future__ import annotations

import pytest

from bench.api_calls import plan_workload, prior_days, simulate_relay
from bench.pacing_model import model_day
from daemon.settings import PROGRESS_POLL_INTERVAL_S


@pytest.mark.parametrize("seed", [6, 11])
async def test_the_model_spends_and_detects_as_the_real_poller_does(seed):
    """On the quiet day the model's requests are within 1% of the real Poller's against the stand-in, and every detection time within 1 s."""
    jobs = plan_workload(imports_per_day=20, days=1, seed=seed)
    history = prior_days(plan_workload, imports_per_day=20, seed=seed)
    real = await simulate_relay(jobs, days=1, fast_s=PROGRESS_POLL_INTERVAL_S, idle_s=300.0, name="real", pacing="progress", history=history)
    modelled = model_day(jobs, history=history)
    assert modelled.requests == pytest.approx(real.total, rel=0.01)
    assert sorted(modelled.latencies_s) == pytest.approx(sorted(real.latencies_s), abs=1.0)
