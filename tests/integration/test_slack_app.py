"""The Slack app sink end to end: one live message per action, updated in place, through a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.settings import RelaySettings
from daemon.voucherify import RetryPolicy
from tests.conftest import until
from tests.fakes.slack_web import BOT_TOKEN, CHANNEL, FakeSlackWeb

FAST = RetryPolicy(max_attempts=3, backoff_max_s=0.05, backoff_multiplier_s=0.01)
UPDATE_INTERVAL_S = 0.5
FAILED_ROWS = [{"source_id": "jane@example.com", "row": 7, "reason": "email: must be a valid email"}, {"source_id": "bob", "row": 9, "reason": "duplicate"}]
RESULT = {"done_count": 1998, "failed_count": 2, "failed": FAILED_ROWS}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlackWeb]:
    """Run a Slack Web API stand-in that accepts chat.update at most 5 times a second."""
    fake = FakeSlackWeb(rates_per_s={"chat.update": 5})
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def app_settings(make_settings, slack):
    """Build settings with one Slack app sink pointed at the stand-in (and the default webhook sink)."""

    def build(**overrides: str) -> RelaySettings:
        sink = {"KIND": "slack_app", "TOKEN": BOT_TOKEN, "CHANNEL": CHANNEL, "API_URL": slack.url, "UPDATE_INTERVAL_S": str(UPDATE_INTERVAL_S)}
        return make_settings(**{f"sinks__live__{k}": v for k, v in sink.items()}, sinks__live__min_interval_s="0", **overrides)

    return build


@asynccontextmanager
async def running(settings: RelaySettings) -> AsyncIterator[Relay]:
    """Run a relay for the body of the block."""
    relay = await build_relay(settings, retry=FAST)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop(grace_s=2)


async def run_import(standin, action_id: str, *, steps: range, pause_s: float = 0.2) -> None:
    """Move an action's progress through ``steps``, a step every ``pause_s`` (Voucherify's progress, scaled down)."""
    for progress in steps:
        standin.update_action(action_id, status="IN_PROGRESS", progress=progress)
        await asyncio.sleep(pause_s)


def header(blocks: list[dict[str, Any]]) -> str:
    """Return a message's header text."""
    return str(blocks[0]["text"]["text"])


def section_texts(blocks: list[dict[str, Any]]) -> str:
    """Return every mrkdwn text of a message, joined."""
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    texts += [f["text"] for b in blocks for f in b.get("fields", [])]
    return "\n".join(texts)


async def test_an_import_is_one_message_updated_live_with_its_failures_in_one_thread_reply(standin, slack, app_settings):
    """A running import posts once, is updated a bounded number of times as progress moves, ends amber, failures in one reply."""
    async with running(app_settings()) as relay:
        await until(lambda: relay.last_poll is not None)
        action_id = standin.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS", progress=0)
        await until(lambda: slack.count("chat.postMessage") == 1)
        await run_import(standin, action_id, steps=range(5, 100, 5))  # 19 steps over about 4 s
        standin.complete_action(action_id, result=RESULT)
        await until(lambda: any(m.thread_ts for m in slack.messages.values()))
    [message] = slack.top_level()
    [reply] = [m for m in slack.messages.values() if m.thread_ts]
    assert slack.count("chat.postMessage") == 2  # the live message and its one thread reply
    assert 2 <= message.updates <= 4.0 / UPDATE_INTERVAL_S + 2  # coalesced: not one per progress step
    assert "completed with failures" in header(message.blocks)
    assert ":large_orange_circle:" in header(message.blocks)
    assert "100%" in section_texts(message.blocks)
    assert "1,998" in section_texts(message.blocks)
    assert action_id in str(message.blocks)
    assert reply.thread_ts == message.ts
    assert "jane@example.com" in reply.text
    assert "duplicate" in reply.text
    assert any("%" in section_texts(b) and "100%" not in section_texts(b) for b in message.history[1:-1])  # progress was shown on the way
    assert not slack.problems


async def test_a_restart_mid_import_keeps_updating_the_same_message(standin, slack, app_settings):
    """Stopping the relay half-way and starting a new one updates the message posted before, never posting another."""
    settings = app_settings()
    async with running(settings) as relay:
        await until(lambda: relay.last_poll is not None)
        action_id = standin.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS", progress=0)
        await until(lambda: slack.count("chat.postMessage") == 1)
        await run_import(standin, action_id, steps=range(10, 50, 10))
    async with running(settings):
        await run_import(standin, action_id, steps=range(50, 100, 10))
        standin.complete_action(action_id, status="FAILED", result={"message": "file unreadable"})
        await until(lambda: "failed" in header(slack.top_level()[0].blocks))
    [message] = slack.top_level()
    assert slack.count("chat.postMessage") == 1
    assert ":red_circle:" in header(message.blocks)
    assert message.updates >= 2


@pytest.mark.parametrize(("live", "expected"), [(None, (range(3), range(3))), ("0.3", (range(6, 16), range(2, 10)))])
async def test_a_live_progress_interval_fills_the_bar_between_sparse_polls(standin, slack, app_settings, live, expected):
    """Progress pacing polls a steadily moving import near its finish; RELAY_LIVE_PROGRESS_INTERVAL polls it often enough to show it."""
    overrides = {"pacing": "progress", "poll_interval": "0.05", "idle_poll_interval": "3"}  # idle: about 2-6 s as arrivals allow
    async with running(app_settings(**overrides, **({"live_progress_interval": live} if live else {}))) as relay:
        await until(lambda: relay.last_poll is not None)
        action_id = standin.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS", progress=5)
        await until(lambda: slack.count("chat.postMessage") == 1)
        lists_before = standin.count("list")
        await run_import(standin, action_id, steps=range(10, 40, 2), pause_s=0.2)  # 15 steps over 3 s: done in about 20 s
        lists = standin.count("list") - lists_before
        [message] = slack.top_level()
    polls, updates = expected
    assert lists in polls, f"{lists} polls in 3 s"
    assert message.updates in updates, f"{message.updates} updates (the sink sends at most one every {UPDATE_INTERVAL_S} s)"
