"""Adaptive polling: slow when idle, fast while busy, within the budget and the project's rate limit."""

from __future__ import annotations

import asyncio

from tests.conftest import until
from tests.integration.test_relay import baseline, running


async def test_idle_relay_polls_slowly_and_wakes_on_activity(standin, receiver, make_settings):
    """With nothing in flight the relay polls at the idle pace; an action in flight brings back the fast pace."""
    async with running(make_settings(poll_interval="0.1", idle_poll_interval="1")) as relay:
        await baseline(relay)
        await asyncio.sleep(1.5)  # the first poll saw nothing: idle pace
        idle_polls = standin.count("list")
        assert idle_polls <= 3
        action_id = standin.add_action(status="IN_PROGRESS")
        await until(lambda: relay.pacing.reason == "busy", timeout_s=3)
        before = standin.count("list")
        await asyncio.sleep(0.6)
        assert standin.count("list") - before >= 4, "fast pace while an action is in flight"
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)


async def test_low_rate_limit_remaining_slows_down(standin, make_settings):
    """When X-Rate-Limit-Remaining drops under a tenth of the limit, the relay polls at the idle pace."""
    standin.rate_limit.per_minute = 30  # the stand-in as a project with 30 requests a minute
    standin.add_action(status="IN_PROGRESS")  # busy: would poll every 0.1 s
    async with running(make_settings(poll_interval="0.1", idle_poll_interval="0.5")) as relay:
        await until(lambda: relay.pacing.reason == "rate_limit", timeout_s=10)
        before = standin.count("list")
        await asyncio.sleep(1.0)
        assert standin.count("list") - before <= 3
    assert 429 not in {r.status for r in standin.requests}, "it backed off before being refused"
