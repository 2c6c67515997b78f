"""Which answers a sink retries and which it gives up on: each status from a real receiver, judged by the delivery policy."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp
import pytest
from tenacity import wait_none

from daemon.delivery_policy import DeliveryPolicy, Verdict
from daemon.model import Delivery
from daemon.sink_settings import SinkSettings
from daemon.sinks.slack import SlackSink
from daemon.sinks.webhook import WebhookSink
from tests.fakes.slack import FakeSlack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from daemon.demo.receiver import RecordingReceiver

POLICY = DeliveryPolicy(max_delay_s=300.0, max_age_s=86400.0, jitter=wait_none())
FIRST_RETRY = Verdict("retry", 0.5)  # attempt 1 with the jitter off: half of BASE_DELAY_S


def delivery(sink: str) -> Delivery:
    """Return a fresh delivery (no attempts yet) for ``sink``."""
    body = b'{"type":"async_action.completed","timestamp":"2026-11-23T12:00:00Z","data":{"id":"aa_1"}}'
    return Delivery(
        row_id=1, event_id="evt_" + "0" * 32, event_type="async_action.completed", sink=sink, action_id="aa_1", body=body, attempts=0, created_at=time.time()
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Give an HTTP session for the sinks."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (200, Verdict("delivered")),
        (204, Verdict("delivered")),
        (301, FIRST_RETRY),
        (307, FIRST_RETRY),
        (400, FIRST_RETRY),
        (401, FIRST_RETRY),
        (403, FIRST_RETRY),
        (404, FIRST_RETRY),
        (408, FIRST_RETRY),
        (410, Verdict("gone")),
        (413, FIRST_RETRY),
        (422, FIRST_RETRY),
        (("retry-after", 429, 7), Verdict("retry", 7.0)),
        (500, FIRST_RETRY),
        (("retry-after", 503, 0), Verdict("retry", 0.25)),
        ("reset", FIRST_RETRY),
    ],
)
async def test_a_webhook_receiver_is_retried_for_every_answer_but_2xx_and_410(receiver: RecordingReceiver, session, answer, verdict):
    """A webhook receiver's 4xx (a misdeploy, a secret not rotated yet) is retried until the max age; only 410 Gone stops the sink."""
    receiver.script.append(answer)
    sink = WebhookSink("hook", SinkSettings(kind="webhook", url=receiver.url, timeout_s=2.0), session)
    sent = delivery("hook")
    result = await sink.send(sent)
    assert POLICY.decide(result, attempts=sent.attempts, created_at=sent.created_at, now=time.time()) == verdict
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("error", "status", "retry_after", "verdict"),
    [
        ("ok", 200, None, Verdict("delivered")),
        ("invalid_token", 403, None, Verdict("rejected")),
        ("action_prohibited", 403, None, Verdict("rejected")),
        ("channel_not_found", 404, None, Verdict("rejected")),
        ("no_service", 404, None, Verdict("rejected")),
        ("no_text", 400, None, Verdict("rejected")),
        ("channel_is_archived", 410, None, Verdict("gone")),
        ("team_disabled", 410, None, Verdict("gone")),
        ("request_timeout", 408, None, FIRST_RETRY),
        ("rate_limited", 429, "7", Verdict("retry", 7.0)),
        ("rollup_error", 500, None, FIRST_RETRY),
        ("service_unavailable", 503, None, FIRST_RETRY),
    ],
)
async def test_slacks_configuration_errors_are_permanent_and_the_rest_retried(session, error, status, retry_after, verdict):
    """Slack's documented configuration answers (403, 404, 400) dead-letter at once, 410 stops the sink, 408/429/5xx retry."""
    slack = FakeSlack(min_interval_s=0.0)
    await slack.start()
    try:
        slack.fail_next(error, status=status, retry_after=retry_after)
        sink = SlackSink("chat", SinkSettings(kind="slack", url=slack.url, timeout_s=2.0), session, min_interval_s=0.0)
        sent = delivery("chat")
        result = await sink.send(sent)
    finally:
        await slack.close()
    assert POLICY.decide(result, attempts=sent.attempts, created_at=sent.created_at, now=time.time()) == verdict
    assert slack.statuses() == [status]
