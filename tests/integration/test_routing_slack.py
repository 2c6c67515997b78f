"""Slack delivery, per-sink routing and stuck alerts, through the whole relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from daemon.demo.receiver import RecordingReceiver
from daemon.model import event_id_for
from daemon.slack_blocks import validate_message
from tests.conftest import baseline, outbox_has, running, until
from tests.fakes.slack import FakeSlack


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """Run a Slack stand-in enforcing Slack's limits and a 0.1 s pace."""
    fake = FakeSlack(min_interval_s=0.1)
    await fake.start()
    yield fake
    await fake.close()


def slack_sink(url: str, *, pace: str = "0.1", **filters: str) -> dict[str, str]:
    """Return the settings overrides for a Slack sink named ``chat``."""
    return {"sinks__chat__kind": "slack", "sinks__chat__url": url, "sinks__chat__min_interval_s": pace} | {f"sinks__chat__{k}": v for k, v in filters.items()}


async def test_every_documented_type_reaches_slack_as_a_valid_message(standin, make_settings, slack):
    """All 22 documented results, finished after the start, arrive in Slack within its limits."""
    ids = [standin.add_action(key) for key in sorted(standin_examples())]
    async with running(make_settings(**slack_sink(slack.url))) as relay:
        await baseline(relay)
        for action_id, key in zip(ids, sorted(standin_examples()), strict=True):
            standin.complete_action(action_id, example=key)
        await until(lambda: len(slack.messages) == 22, timeout_s=20)
    assert slack.problems == []
    assert all(validate_message(m) == [] for m in slack.messages)
    assert 429 not in slack.statuses(), "the sink paces itself"


def standin_examples() -> list[str]:
    """Return the documented example keys."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    return list(json.loads((Path(__file__).parents[2] / "daemon" / "demo" / "voucherify_examples.json").read_text()))


async def test_a_burst_of_fifty_completions_all_arrive_paced(standin, make_settings, slack):
    """Fifty actions finishing at once all reach Slack, one per interval, none rejected."""
    ids = [standin.add_action("VOUCHERS.IMPORT_CSV") for _ in range(50)]
    async with running(make_settings(**slack_sink(slack.url))) as relay:
        await baseline(relay)
        for action_id in ids:
            standin.complete_action(action_id, example="VOUCHERS.IMPORT_CSV")
        await until(lambda: len(slack.messages) == 50, timeout_s=30)
    assert set(slack.statuses()) == {200}
    gaps = [b.at - a.at for a, b in zip(slack.answers, slack.answers[1:], strict=False)]
    assert min(gaps) >= 0.1


async def test_rate_limited_slack_loses_nothing(standin, make_settings):
    """With the sink's pacing off, Slack's 429 + Retry-After slows delivery but every message arrives."""
    fake = FakeSlack(min_interval_s=0.3, retry_after="1")
    await fake.start()
    try:
        ids = [standin.add_action() for _ in range(5)]
        async with running(make_settings(**slack_sink(fake.url, pace="0"))) as relay:
            await baseline(relay)
            for action_id in ids:
                standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await until(lambda: len(fake.messages) == 5, timeout_s=20)
    finally:
        await fake.close()
    assert 429 in fake.statuses()
    for answer, following in zip(fake.answers, fake.answers[1:], strict=False):
        if answer.status == 429:
            assert following.at - answer.at >= 0.95, "nothing is sent before Retry-After has passed"


async def test_slack_configuration_errors_dead_letter_without_retrying(standin, make_settings, slack):
    """channel_not_found is a configuration error: the delivery is dead-lettered at once, not retried."""
    slack.fail_next("channel_not_found")
    action_id = standin.add_action()
    async with running(make_settings(**slack_sink(slack.url))) as relay:
        await baseline(relay)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: outbox_has(relay, dead=1))
        await asyncio.sleep(0.3)
        [dead] = await relay.stores.outbox.list(dead=True)
    assert len(slack.answers) == 1
    assert "channel_not_found" in (dead.last_error or "")


async def test_routing_by_type_glob_and_outcome(standin, receiver, make_settings):
    """A sink filtered to VOUCHERS.* failures gets only those; the unfiltered webhook gets everything."""
    ops = RecordingReceiver()
    await ops.start()
    try:
        overrides = {"sinks__ops__kind": "webhook", "sinks__ops__url": ops.url, "sinks__ops__types": "VOUCHERS.*", "sinks__ops__outcomes": "failure"}
        plan = {
            standin.add_action("VOUCHERS.IMPORT_CSV"): "VOUCHERS.IMPORT_CSV",  # failure, VOUCHERS.*: both
            standin.add_action("VOUCHERS.BULK_UPDATE"): "VOUCHERS.BULK_UPDATE",  # success: webhook only
            standin.add_action("CUSTOMERS.IMPORT_CSV"): "CUSTOMERS.IMPORT_CSV",  # failure, not VOUCHERS.*: webhook only
        }
        async with running(make_settings(**overrides)) as relay:
            await baseline(relay)
            for action_id, example in plan.items():
                standin.complete_action(action_id, example=example)
            await until(lambda: len(receiver.delivered) == 3)
            await asyncio.sleep(0.3)
        failing_voucher = next(iter(plan))
        assert [r.envelope["data"]["id"] for r in ops.delivered] == [failing_voucher]
    finally:
        await ops.close()


async def test_stuck_action_alerts_once_then_completes(standin, receiver, make_settings, slack):
    """An action in progress past RELAY_STUCK_AFTER sends one stuck event; its completion still follows."""
    async with running(make_settings(stuck_after="1s", **slack_sink(slack.url))) as relay:
        await baseline(relay)
        action_id = standin.add_action("CUSTOMERS.IMPORT_CSV", status="IN_PROGRESS", progress=40, created_at=datetime.now(UTC))
        await until(lambda: len(receiver.delivered) == 1, timeout_s=10)
        await asyncio.sleep(0.5)  # more polls: still one stuck event
        assert len(receiver.delivered) == 1
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 2)
        await until(lambda: len(slack.messages) == 2)
    stuck, done = (r.envelope for r in receiver.delivered)
    assert (stuck["type"], done["type"]) == ("async_action.stuck", "async_action.completed")
    assert receiver.delivered[0].event_id == event_id_for(action_id, "async_action.stuck")
    assert stuck["data"]["stuck_for_s"] >= 1
    assert "Stuck" in slack.messages[0]["text"] or "stuck" in slack.messages[0]["text"]


async def test_actions_stuck_before_the_first_start_do_not_alert(standin, receiver, make_settings):
    """The baseline covers stuck alerts too: an old in-flight action does not page anyone at first start."""
    standin.add_action(status="ENQUEUED", created_at=datetime(2026, 1, 1, tzinfo=UTC))
    async with running(make_settings(stuck_after="1s")) as relay:
        await baseline(relay)
        await until(lambda: standin.count("list") >= 5)
    assert receiver.requests == []
