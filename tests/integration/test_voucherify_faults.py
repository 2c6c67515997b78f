"""Voucherify faults: whatever the API does for a while, the relay keeps running, sends no false event and misses none.

Each case injects its faults into the stand-in (list and/or get) just as actions
complete, then checks the relay is still scheduling, exactly the expected events
arrive once the API recovers, and, for 429, that no request left before Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.model import event_id_for
from tests.conftest import FAST, until, watch_output

ACTIONS = 12
PAGE_SIZE = "5"  # 12 actions in flight span three pages, so paging is under fire too


@dataclass(frozen=True)
class FaultCase:
    """Faults to inject as ``(kind, path, times, params)``, settings to run with, and whether an action vanishes."""

    name: str
    faults: list[tuple[str, str, int, dict[str, Any]]]
    settings: dict[str, str] = field(default_factory=dict)
    disappears: bool = False


EVERYTHING = [
    ("reset", "list", 2, {}),
    ("malformed", "get", 1, {}),
    ("503", "get", 1, {}),
    ("shuffle", "list", 2, {}),
    ("truncated", "list", 1, {}),
    ("500", "list", 1, {}),
]
CASES = [
    FaultCase("429 with Retry-After mid-cycle", [("429", "get", 1, {"retry_after": 1})]),  # 429 on list: test_relay.py
    FaultCase("500 502 503 bursts", [("503", "list", 2, {}), ("500", "get", 2, {}), ("502", "any", 3, {})]),
    FaultCase("timeouts", [("timeout", "list", 2, {"delay_s": 1}), ("timeout", "get", 2, {"delay_s": 1})], {"api_timeout_s": "0.3"}),
    FaultCase("connection resets", [("reset", "list", 3, {}), ("reset", "get", 3, {})]),
    FaultCase("malformed JSON", [("malformed", "list", 2, {}), ("malformed", "get", 2, {})]),
    FaultCase("truncated JSON", [("truncated", "list", 2, {}), ("truncated", "get", 2, {})]),
    FaultCase("list pages out of order", [("shuffle", "list", 6, {})]),
    FaultCase("an in-flight action disappears (404)", [], disappears=True),
    FaultCase("401 in the middle of a run", [("401", "list", 2, {}), ("401", "get", 1, {})]),
    FaultCase("403 in the middle of a run", [("403", "get", 1, {})]),
    FaultCase("everything at once", EVERYTHING),
]


@asynccontextmanager
async def relay_running(settings, *, auth_backoff_s: tuple[float, float] = (60.0, 900.0)) -> AsyncIterator[Relay]:
    """Run a relay (fast retries, no waiting but Retry-After) for the block; stop it whatever happens."""
    relay = await build_relay(settings, retry=FAST, auth_backoff_s=auth_backoff_s)
    await relay.start()
    metrics = getattr(relay, "metrics", None)
    if metrics is not None:
        watch_output(lambda: metrics.render().decode())
    try:
        yield relay
    finally:
        await relay.stop(grace_s=2)


async def finish(standin: VoucherifyStandIn, ids: list[str]) -> dict[str, str]:
    """Complete the actions in three waves, every third one failing; return the expected event id per action."""
    expected = {}
    for wave in range(3):
        for n, action_id in list(enumerate(ids))[wave::3]:
            failed = n % 3 == 0
            if failed:
                standin.complete_action(action_id, status="FAILED", result={"message": "the CSV file has no header row"})
            else:
                standin.complete_action(action_id, result={"message": f"{n} imported", "done_count": n, "failed_count": 0})
            expected[action_id] = event_id_for(action_id, "async_action.failed" if failed else "async_action.completed")
        await asyncio.sleep(0.1)
    return expected


def assert_retry_after_honoured(standin: VoucherifyStandIn, retry_after_s: float) -> int:
    """Check that nothing reached the stand-in between each 429 and its Retry-After; return how many 429s there were."""
    limited = [r for r in standin.requests if r.status == 429]
    for answered in limited:
        early = [r for r in standin.requests if 0 < (r.at - answered.at).total_seconds() < retry_after_s - 0.01]
        assert early == [], f"requests sent {[(r.at - answered.at).total_seconds() for r in early]} s after a 429 with Retry-After: {retry_after_s:g}"
    return len(limited)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_the_relay_survives_api_faults(case, standin, receiver: RecordingReceiver, make_settings):
    """Under the case's faults the relay keeps polling, and exactly the real completion events arrive, once the API recovers.

    The 401/403 back-off is shortened to (0.2, 0.5) s through ``build_relay``: it is a tuning constant (60 s to 15 min in
    production), not behaviour under test; the back-off itself is still what the relay does after 401/403.
    """
    ids = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(ACTIONS)]
    async with relay_running(make_settings(list_page_size=PAGE_SIZE, **case.settings), auth_backoff_s=(0.2, 0.5)) as relay:
        await until(lambda: relay.last_poll is not None)
        for kind, path, times, params in case.faults:
            standin.inject(kind, path=path, times=times, **params)
        vanished = ids.pop() if case.disappears else None  # the newest, still in flight
        if vanished:
            standin.remove_action(vanished)
        expected = await finish(standin, ids)
        late = standin.add_action("VOUCHERS.BULK_UPDATE")  # created and finished between two polls, mid-fault
        standin.complete_action(late, result={"message": "done", "done_count": 1, "failed_count": 0})
        expected[late] = event_id_for(late, "async_action.completed")
        await until(lambda: set(expected.values()) <= receiver.delivered_ids(), timeout_s=15)
        assert standin.faults.pending == (), "every injected fault was hit"
        lists = standin.count("list")
        await until(lambda: standin.count("list") >= lists + 3)  # a few clean cycles: nothing false comes late
        assert relay.running
        assert relay.last_poll_ok_at is not None
        if vanished:
            assert vanished not in await relay.stores.actions.in_flight()
    assert receiver.delivered_ids() == set(expected.values()), "no event other than the real completions"
    for received in receiver.delivered:
        data = received.envelope["data"]
        assert data["detail_available"] is True, "events are built from the full action, not a faulty answer"
        assert expected[data["id"]] == received.event_id
    if any(kind == "429" for kind, *_ in case.faults):
        assert assert_retry_after_honoured(standin, retry_after_s=1) == sum(times for kind, _, times, _ in case.faults if kind == "429")


async def test_a_restart_still_honours_retry_after(standin, make_settings):
    """A relay restarted while a 429's Retry-After is running sends nothing to Voucherify until it has passed."""
    settings = make_settings()
    async with relay_running(settings) as relay:
        await until(lambda: relay.last_poll is not None)
        standin.inject("429", path="list", retry_after=40)  # longer than the inline wait: the cycle is deferred
        await until(lambda: any(r.status == 429 for r in standin.requests))
    [limited] = [r for r in standin.requests if r.status == 429]
    async with relay_running(settings):
        await asyncio.sleep(0.5)
    assert [r for r in standin.requests if r.at > limited.at] == []
