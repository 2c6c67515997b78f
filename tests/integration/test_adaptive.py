"""Adaptive polling: slow when idle, fast while busy, within the budget and the project's rate limit."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import baseline, running, until


async def test_idle_relay_polls_slowly_and_wakes_on_activity(standin, receiver, make_settings):
    """With nothing in flight the relay polls at the idle pace; an action in flight brings back the fast pace."""
    async with running(make_settings(poll_interval="0.1", idle_poll_interval="1", pacing="adaptive")) as relay:
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
    async with running(make_settings(poll_interval="0.1", idle_poll_interval="0.5", pacing="adaptive")) as relay:
        await until(lambda: relay.pacing.reason == "rate_limit", timeout_s=10)
        before = standin.count("list")
        await asyncio.sleep(1.0)
        assert standin.count("list") - before <= 3
    assert 429 not in {r.status for r in standin.requests}, "it backed off before being refused"


async def test_progress_pacing_polls_near_the_estimated_finish(standin, receiver, make_settings):
    """With progress pacing, an action whose listed progress moves steadily is polled near its estimated finish, not every fast interval."""
    action_id = standin.add_action(status="IN_PROGRESS", progress=0)
    async with running(make_settings(poll_interval="0.05", idle_poll_interval="5", pacing="progress")) as relay:
        await baseline(relay)
        await asyncio.sleep(0.5)
        standin.update_action(action_id, progress=20)  # 20% in 0.5 s: done 2 s from now
        await until(lambda: relay.pacing.reason == "progress", timeout_s=1)
        polls_before = standin.count("list")
        for progress in (40, 60, 80):
            await asyncio.sleep(0.5)
            standin.update_action(action_id, progress=progress)
        await asyncio.sleep(0.4)
        polls_while_running = standin.count("list") - polls_before
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        finished = time.monotonic()
        await until(lambda: len(receiver.delivered) == 1, timeout_s=3)
        detected_s = time.monotonic() - finished
    assert polls_while_running <= 3, f"{polls_while_running} polls in 1.9 s; the fast pace would make about 38"
    assert detected_s < 0.6, "polled again close to the estimated finish"


async def test_progress_pacing_learns_from_the_baseline_and_resumes_after_a_restart(standin, receiver, make_settings):
    """The baseline's last day is learned at once (arrivals and durations); what was learned outlives a restart."""
    now = datetime.now(UTC)
    for hours_ago in (2, 30):  # one within the baseline's day, one before it
        old = standin.add_action(status="DONE", progress=100, created_at=now - timedelta(hours=hours_ago))
        standin.update_action(old, updated_at=now - timedelta(hours=hours_ago) + timedelta(seconds=90))
    settings = make_settings(poll_interval="0.05", idle_poll_interval="0.2", pacing="progress")
    async with running(settings) as relay:
        await baseline(relay)
        learned = relay.pacing.history
        assert learned.since == pytest.approx((now - timedelta(hours=24)).timestamp(), abs=5)
        assert learned.created == pytest.approx(((now - timedelta(hours=2)).timestamp(),), abs=1)
        assert learned.durations_s == pytest.approx((90.0, 90.0), abs=0.01)  # durations need no window
        action_id = standin.add_action(status="IN_PROGRESS", progress=0)
        await until(lambda: len(relay.pacing.history.created) == 2, timeout_s=3)
        await asyncio.sleep(0.3)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1, timeout_s=3)
        await until(lambda: len(relay.pacing.history.durations_s) == 3, timeout_s=3)
        before_restart = relay.pacing.history
    assert before_restart.durations_s[-1] >= 0.3
    async with running(settings) as again:
        await until(lambda: again.pacing.history.durations_s != (), timeout_s=3)
        resumed = again.pacing.history
    assert resumed.since == pytest.approx(before_restart.since, abs=1)
    assert resumed.created == pytest.approx(before_restart.created, abs=1)
    assert resumed.durations_s == pytest.approx(before_restart.durations_s, abs=0.1)


async def test_a_baseline_stopped_by_the_page_cap_counts_only_the_hours_it_read(standin, make_settings):
    """A baseline cut short by RELAY_MAX_PAGES_PER_CYCLE counts as watched only back to the oldest entry it read, not a whole day."""
    now = datetime.now(UTC)
    for hours_ago in (1, 2, 3, 10, 20):
        standin.add_action(status="DONE", progress=100, created_at=now - timedelta(hours=hours_ago))
    settings = make_settings(poll_interval="0.05", idle_poll_interval="5", pacing="progress", list_page_size="2", max_pages_per_cycle="1")
    async with running(settings) as relay:
        await baseline(relay)
        learned = relay.pacing.history
    assert learned.since == pytest.approx((now - timedelta(hours=2)).timestamp(), abs=1)  # the newest page: 1 h and 2 h ago
    assert learned.created == pytest.approx(((now - timedelta(hours=2)).timestamp(), (now - timedelta(hours=1)).timestamp()), abs=1)
