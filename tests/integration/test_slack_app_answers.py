"""The Slack app sink's reading of Slack's Web API answers, started events for webhooks, and the message table's migration."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

import aiohttp
import pytest

from daemon.demo.receiver import RecordingReceiver
from daemon.model import Delivery, EventType
from daemon.normalize import started_event
from daemon.sink_settings import SinkSettings
from daemon.sinks.slack_app import SlackAppSink
from daemon.store import MessageRef
from daemon.store.sqlite import open_sqlite
from daemon.store.sqlite_db import SCHEMA_VERSION
from tests.conftest import running, until
from tests.fakes.slack_web import BOT_TOKEN, CHANNEL, FakeSlackWeb


def started_delivery(action_id: str = "aa_0123456789") -> Delivery:
    """Return an outbox row carrying a started event."""
    action = {"id": action_id, "type": "VOUCHERS.IMPORT_CSV", "status": "IN_PROGRESS", "progress": 10, "created_at": "2026-01-01T00:00:00.000Z"}
    event = started_event(action, detected_at=datetime.now(tz=UTC))
    return Delivery(row_id=1, event_id=event.id, event_type=event.type, sink="live", action_id=action_id, body=event.body(), attempts=0, created_at=time.time())


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        ("channel_not_found", 200, (True, None, "__CHANNEL")),
        ("not_in_channel", 200, (True, None, "/invite")),
        ("invalid_auth", 200, (True, None, "__TOKEN")),
        ("token_revoked", 200, (True, None, "__TOKEN")),
        ("account_inactive", 200, (True, None, "__TOKEN")),
        ("missing_scope", 200, (True, None, "chat:write")),
        ("ratelimited", 429, (False, 7.0, "ratelimited")),
        ("internal_error", 500, (False, None, "HTTP 500")),
        ("service_unavailable", 503, (False, None, "HTTP 503")),
    ],
)
async def test_slacks_error_answers_are_classified(tmp_path, error, status, expected):
    """Configuration errors dead-letter at once with a hint naming what to fix; ratelimited and 5xx retry (after Retry-After)."""
    slack = FakeSlackWeb(retry_after="7")
    await slack.start()
    stores = open_sqlite(tmp_path / "state.db")
    spec = SinkSettings(kind="slack_app", token=BOT_TOKEN, channel=CHANNEL, api_url=slack.url, timeout_s=2.0)
    try:
        async with aiohttp.ClientSession() as session:
            sink = SlackAppSink("live", spec, session, refs=stores.messages)
            slack.fail_next("chat.postMessage", error, status=status)
            result = await sink.send(started_delivery())
    finally:
        await stores.close()
        await slack.close()
    permanent, retry_after_s, hint = expected
    assert not result.delivered
    assert result.permanent is permanent
    assert result.retry_after_s == retry_after_s
    assert hint in result.detail
    assert BOT_TOKEN not in result.detail


async def test_a_resent_started_event_posts_no_second_message(tmp_path):
    """A started event sent again (a crash before its result was recorded) finds the persisted message and posts nothing."""
    slack = FakeSlackWeb()
    await slack.start()
    stores = open_sqlite(tmp_path / "state.db")
    spec = SinkSettings(kind="slack_app", token=BOT_TOKEN, channel=CHANNEL, api_url=slack.url)
    try:
        async with aiohttp.ClientSession() as session:
            sink = SlackAppSink("live", spec, session, refs=stores.messages)
            results = [await sink.send(started_delivery()) for _ in range(2)]
    finally:
        await stores.close()
        await slack.close()
    assert all(r.delivered for r in results)
    assert slack.count("chat.postMessage") == 1


async def test_webhook_sinks_get_started_events_only_when_they_opt_in(standin, receiver, make_settings):
    """With __EVENTS naming started, a webhook sink gets async_action.started for an action first seen in flight; the default does not."""
    opted = RecordingReceiver()
    await opted.start()
    settings = make_settings(sinks__opted__kind="webhook", sinks__opted__url=opted.url, sinks__opted__events="started,completed,failed,stuck")
    try:
        async with running(settings) as relay:
            await until(lambda: relay.last_poll is not None)
            action_id = standin.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS", progress=3)
            await until(lambda: len(opted.delivered) == 1)
            standin.complete_action(action_id, result={"done_count": 5, "failed_count": 0})
            await until(lambda: len(opted.delivered) == 2 and len(receiver.delivered) == 1)
    finally:
        await opted.close()
    assert [r.envelope["type"] for r in opted.delivered] == [EventType.STARTED, EventType.COMPLETED]
    assert [r.envelope["type"] for r in receiver.delivered] == [EventType.COMPLETED]  # the default: no started events
    started = opted.delivered[0]
    assert started.envelope["data"]["id"] == action_id
    assert started.envelope["data"]["progress"] == 3
    assert started.event_id.startswith("evt_")


async def test_an_old_state_file_gains_the_message_table(tmp_path):
    """A state file of schema version 1 opens, is migrated to the current version and keeps Slack message references."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('baseline_done', '1')")
        db.execute("PRAGMA user_version=1")
    db.close()
    stores = open_sqlite(path)
    try:
        await stores.messages.put("live", "aa_1", MessageRef(channel=CHANNEL, ts="1.000001"), now=time.time())
        assert await stores.messages.get("live", "aa_1") == MessageRef(channel=CHANNEL, ts="1.000001")
        assert not (await stores.actions.load_cursor()).first_run
    finally:
        await stores.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()
