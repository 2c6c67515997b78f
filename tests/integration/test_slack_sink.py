"""SlackSink against a fake Slack incoming webhook: pacing, Retry-After, fallback, classification, no leaked URL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from daemon.model import Delivery
from daemon.normalize import normalize
from daemon.sink_settings import SinkSettings
from daemon.sinks.slack import SlackSink
from tests.fakes.slack import HOOK_PATH, FakeSlack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

EXAMPLES = json.loads((Path(__file__).parents[2] / "daemon" / "demo" / "voucherify_examples.json").read_text())
SECRET = HOOK_PATH.rsplit("/", 1)[-1]
FAST_S = 0.05


def delivery(key: str = "CUSTOMERS.IMPORT_CSV", row_id: int = 1) -> Delivery:
    """Return a delivery of the normalized documented example ``key``."""
    event = normalize(EXAMPLES[key], detected_at=datetime(2026, 1, 1, tzinfo=UTC))
    return Delivery(
        row_id=row_id, event_id=event.id, event_type=event.type, sink="slack", action_id=event.data["id"], body=event.body(), attempts=0, created_at=time.time()
    )


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """Run a fake Slack that accepts one message per FAST_S."""
    fake = FakeSlack(min_interval_s=FAST_S)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Give an HTTP session for the sink."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def make_sink(slack: FakeSlack, session: aiohttp.ClientSession) -> Callable[..., SlackSink]:
    """Build a SlackSink pointed at the fake."""

    def build(*, min_interval_s: float = FAST_S, timeout_s: float = 2.0, **kwargs: Any) -> SlackSink:
        settings = SinkSettings(kind="slack", url=slack.url, timeout_s=timeout_s)
        return SlackSink("alerts", settings, session, min_interval_s=min_interval_s, **kwargs)

    return build


async def test_delivers_a_block_kit_message(slack, make_sink):
    """A documented example arrives as one Block Kit message with its text fallback, answered 200 ok."""
    result = await make_sink().send(delivery("CUSTOMERS.IMPORT_CSV"))
    assert result.delivered
    assert (result.status, result.detail) == (200, "HTTP 200: ok")
    [message] = slack.messages
    assert message["blocks"][0]["text"]["text"] == ":x: Customers CSV import failed"
    assert "Customers CSV import" in message["text"]


async def test_a_burst_is_paced_so_slack_never_says_429(session):
    """Twenty concurrent sends through one sink reach a fake enforcing 0.2 s spacing with no 429."""
    fake = FakeSlack(min_interval_s=0.2)
    await fake.start()
    try:
        sink = SlackSink("alerts", SinkSettings(kind="slack", url=fake.url), session, min_interval_s=0.2)
        results = await asyncio.gather(*(sink.send(delivery(key, row_id=i)) for i, key in enumerate(sorted(EXAMPLES)[:20])))
    finally:
        await fake.close()
    assert all(r.delivered for r in results)
    assert fake.statuses() == [200] * 20
    assert len(fake.messages) == 20


async def test_retry_after_is_returned_and_holds_the_next_send(slack, make_sink):
    """A 429 returns Slack's Retry-After, and the sink sends nothing more until it has passed."""
    sink = make_sink()
    slack.fail_next("rate_limited", retry_after="0.3")
    limited = await sink.send(delivery())
    after = await sink.send(delivery())
    assert (limited.delivered, limited.status, limited.retry_after_s) == (False, 429, 0.3)
    assert after.delivered
    assert slack.answers[1].at - slack.answers[0].at >= 0.3


async def test_a_long_retry_after_defers_without_sending(slack, make_sink):
    """While a Retry-After longer than the sink will sleep is running, send() returns at once without contacting Slack."""
    sink = make_sink(max_hold_s=1.0)
    slack.fail_next("rate_limited", retry_after="30")
    await sink.send(delivery())
    started = time.monotonic()
    held = await sink.send(delivery())
    assert time.monotonic() - started < 0.5
    assert not held.delivered
    assert held.retry_after_s is not None
    assert 29 < held.retry_after_s <= 30
    assert len(slack.answers) == 1


@pytest.mark.parametrize("error", ["invalid_blocks", "msg_blocks_too_long"])
async def test_rejected_blocks_fall_back_to_plain_text_once(slack, make_sink, error):
    """When Slack rejects the blocks, the same send() delivers the text fallback alone and logs an error."""
    slack.fail_next(error)
    with capture_logs() as logs:
        result = await make_sink().send(delivery("VOUCHERS.IMPORT"))
    assert result.delivered
    assert result.detail == f"HTTP 200: ok (plain-text fallback after {error})"
    [message] = slack.messages
    assert set(message) == {"text"}
    assert "Vouchers import failed" in message["text"]
    [rejected] = [entry for entry in logs if entry["event"] == "slack.blocks_rejected"]
    assert rejected["log_level"] == "error"
    assert rejected["answer"] == error


async def test_a_rejected_fallback_is_permanent(slack, make_sink):
    """If even the plain text is refused, the delivery is permanent rather than retried forever."""
    slack.fail_next("invalid_blocks")
    slack.fail_next("invalid_payload")
    result = await make_sink().send(delivery())
    assert (result.delivered, result.permanent, result.status) == (False, True, 400)
    assert len(slack.answers) == 2


@pytest.mark.parametrize(
    ("error", "status", "gone"),
    [
        ("channel_not_found", 404, False),
        ("no_service", 404, False),
        ("no_team", 404, False),
        ("invalid_token", 403, False),
        ("action_prohibited", 403, False),
        ("channel_is_archived", 410, True),
        ("team_disabled", 410, True),
    ],
)
async def test_configuration_errors_are_permanent(slack, make_sink, error, status, gone):
    """Slack's configuration errors stop retries; an archived channel also marks the sink gone."""
    slack.fail_next(error)
    result = await make_sink().send(delivery())
    assert (result.delivered, result.permanent, result.gone, result.status) == (False, True, gone, status)
    assert result.detail == f"HTTP {status}: {error}"


async def test_server_errors_are_retried(slack, make_sink):
    """A 5xx is a plain retry: not permanent, not gone, no Retry-After."""
    slack.fail_next("rollup_error")
    result = await make_sink().send(delivery())
    assert (result.delivered, result.permanent, result.gone, result.retry_after_s, result.status) == (False, False, False, None, 500)


async def test_timeouts_and_refused_connections_are_retried(slack, make_sink):
    """A slow Slack times out and a closed one refuses; both are retries naming no URL."""
    slack.delay_s = 0.5
    slow = await make_sink(timeout_s=0.1).send(delivery())
    await slack.close()
    refused = await make_sink().send(delivery())
    assert (slow.delivered, slow.permanent, slow.detail) == (False, False, "timed out after 0.1s")
    assert (refused.delivered, refused.permanent) == (False, False)
    assert refused.detail.startswith("connection failed (")


async def test_the_webhook_url_never_leaks(slack, make_sink):
    """Neither repr, describe, any result detail nor any log line contains the webhook's secret path."""
    sink = make_sink()
    results = []
    with capture_logs() as logs:
        for error in ["invalid_blocks", "rate_limited", "channel_not_found", "channel_is_archived", "rollup_error"]:
            slack.fail_next(error, retry_after="0.05")
            results.append(await sink.send(delivery()))
        await slack.close()
        results.append(await sink.send(delivery()))
    seen = [repr(sink), sink.describe(), *(r.detail for r in results), *(repr(r) for r in results), repr(logs)]
    assert not [text for text in seen if SECRET in text or slack.url in text]
    assert sink.describe().startswith("slack http://127.0.0.1:")


async def test_the_fake_enforces_slacks_limits(slack, session):
    """The fake answers like Slack to a message that breaks a block limit or the total length."""
    too_many = {"text": "t", "blocks": [{"type": "divider"}] * 51}
    too_long = {"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}] * 4}
    answers = []
    for message in (too_many, too_long):
        async with session.post(slack.url, json=message) as response:
            answers.append((response.status, await response.text()))
    async with session.post(slack.url.replace(SECRET, "wrong"), json={"text": "t"}) as response:
        answers.append((response.status, await response.text()))
    assert answers == [(400, "invalid_blocks"), (400, "msg_blocks_too_long"), (404, "no_service")]
    assert slack.messages == []
