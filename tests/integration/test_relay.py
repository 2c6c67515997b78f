"""The relay in-process against the Voucherify stand-in and a real webhook receiver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from daemon.app import Relay
from daemon.demo.receiver import verify_signature
from daemon.model import event_id_for
from tests.conftest import WEBHOOK_SECRET, baseline, outbox_has, running, until


async def not_in_flight(relay: Relay, action_id: str) -> bool:
    """Whether the relay no longer holds ``action_id`` as in flight."""
    return action_id not in await relay.stores.actions.in_flight()


async def test_completions_arrive_signed_with_one_get_each(standin, receiver, make_settings):
    """Actions finishing after the start arrive once each, signed, costing one GET per action."""
    ids = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(3)]
    async with running(make_settings()) as relay:
        await baseline(relay)
        standin.complete_action(ids[0], example="CUSTOMERS.IMPORT_CSV")
        standin.complete_action(ids[1], example="PRODUCTS.IMPORT_CSV")
        standin.complete_action(ids[2], status="FAILED", result={"message": "boom"})
        await until(lambda: len(receiver.delivered) == 3)
        polls_after = standin.count("list")
    assert standin.count("get") == 3
    assert polls_after >= 2
    by_action = {r.envelope["data"]["id"]: r for r in receiver.delivered}
    assert set(by_action) == set(ids)
    assert by_action[ids[2]].envelope["type"] == "async_action.failed"
    assert by_action[ids[1]].envelope["data"]["outcome"] == "partial"
    for received in receiver.delivered:
        assert verify_signature(secret=WEBHOOK_SECRET, headers=received.headers, body=received.body)
        assert received.event_id.startswith("evt_")


async def test_steady_state_costs_one_list_request_per_cycle(standin, make_settings):
    """With nothing finishing, each cycle is exactly one list request and no GET."""
    standin.add_action("VOUCHERS.IMPORT", status="IN_PROGRESS", progress=10)
    async with running(make_settings()) as relay:
        await until(lambda: standin.count("list") >= 6)
    assert standin.count("get") == 0
    assert relay.last_poll is not None
    assert relay.last_poll.api_calls == 1


async def test_first_start_sends_nothing_for_history(standin, receiver, make_settings):
    """Actions that finished before the first start produce no events (the baseline)."""
    for _ in range(5):
        standin.add_action("VOUCHERS.IMPORT_CSV", status="DONE", progress=100)
    async with running(make_settings()) as relay:
        await baseline(relay)
        await until(lambda: standin.count("list") >= 4)
    assert receiver.requests == []
    assert standin.count("get") == 0


async def test_backfill_sends_recent_history_once(standin, receiver, make_settings):
    """With RELAY_BACKFILL, actions finished inside the window are sent once, older ones not."""
    now = datetime.now(UTC)
    recent = standin.add_action("SKUS.IMPORT_CSV", created_at=now - timedelta(minutes=30))
    standin.complete_action(recent, example="SKUS.IMPORT_CSV")
    old = standin.add_action("SKUS.IMPORT_CSV", created_at=now - timedelta(hours=3))
    standin.complete_action(old, example="SKUS.IMPORT_CSV")
    standin.update_action(old, updated_at=(now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    settings = make_settings(backfill="1h")
    async with running(settings):
        await until(lambda: len(receiver.delivered) == 1)
        await until(lambda: standin.count("list") >= 4)
    assert [r.envelope["data"]["id"] for r in receiver.delivered] == [recent]
    async with running(settings):  # a restart must not backfill again
        await until(lambda: standin.count("list") >= 8)
    assert len(receiver.delivered) == 1


async def test_paging_past_a_hundred_actions(standin, receiver, make_settings):
    """With 250 actions in flight, every completion is found by paging, not by 150 GETs a cycle."""
    ids = [standin.add_action("ORDERS.IMPORT") for _ in range(250)]
    async with running(make_settings()) as relay:
        await baseline(relay)
        lists_before = standin.count("list")
        for action_id in ids:
            standin.complete_action(action_id, example="ORDERS.IMPORT")
        await until(lambda: len(receiver.delivered_ids()) == 250, timeout_s=20)
    assert standin.count("get") == 250
    assert lists_before <= 3


async def test_new_actions_finished_between_polls_are_sent(standin, receiver, make_settings):
    """An action created and finished between two polls is first seen terminal and still sent."""
    async with running(make_settings()) as relay:
        await baseline(relay)
        action_id = standin.add_action("VOUCHERS.BULK_UPDATE")
        standin.complete_action(action_id, example="VOUCHERS.BULK_UPDATE")
        await until(lambda: len(receiver.delivered) == 1)
    assert receiver.delivered[0].envelope["data"]["id"] == action_id


async def test_429_retry_after_is_honoured(standin, receiver, make_settings):
    """After a 429 with Retry-After: 1, no request is sent before a second has passed."""
    action_id = standin.add_action()
    async with running(make_settings()) as relay:
        await baseline(relay)
        standin.inject("429", path="list", retry_after=1)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1, timeout_s=10)
    limited = [r for r in standin.requests if r.status == 429]
    assert len(limited) == 1
    after = [r for r in standin.requests if r.at > limited[0].at]
    assert after, "the relay never came back"
    assert (after[0].at - limited[0].at).total_seconds() >= 0.99


async def test_server_errors_are_retried_within_the_cycle(standin, receiver, make_settings):
    """500/502/503 on list and GET are retried; the event still arrives exactly once."""
    action_id = standin.add_action()
    async with running(make_settings()) as relay:
        await baseline(relay)
        standin.inject("503", path="list")
        standin.inject("502", path="get")
        standin.inject("500", path="get")
        standin.complete_action(action_id, example="VOUCHERS.IMPORT")
        await until(lambda: len(receiver.delivered) == 1)
    assert receiver.delivered[0].envelope["data"]["id"] == action_id


async def test_malformed_and_truncated_bodies_never_become_events(standin, receiver, make_settings):
    """A bad body fails that cycle; the real event follows once the API recovers."""
    action_id = standin.add_action()
    async with running(make_settings()) as relay:
        await baseline(relay)
        standin.inject("malformed", path="get")
        standin.inject("truncated", path="get")
        standin.complete_action(action_id, example="PRODUCTS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)
    assert receiver.delivered[0].envelope["data"]["failed_count"] == 1
    assert standin.count("get") == 3


async def test_unordered_list_falls_back_to_a_full_scan(standin, receiver, make_settings):
    """A page that is not newest first is noticed and the scan still finds every completion."""
    ids = [standin.add_action() for _ in range(30)]
    with capture_logs() as logs:
        async with running(make_settings(list_page_size="10")) as relay:
            await baseline(relay)
            standin.inject("shuffle", path="list", times=3)
            for action_id in ids:
                standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await until(lambda: len(receiver.delivered_ids()) == 30)
    assert [e for e in logs if e["event"] == "list.unordered"], "the shuffled page was noticed"
    assert receiver.delivered_ids() == {event_id_for(i, "async_action.completed") for i in ids}, "every completion, once"


async def test_an_action_that_disappears_sends_nothing(standin, receiver, make_settings):
    """An in-flight action that vanishes (404) is forgotten, with no false event."""
    ids = [standin.add_action() for _ in range(120)]
    async with running(make_settings(list_page_size="100")) as relay:
        await baseline(relay)
        standin.remove_action(ids[0])  # the oldest: outside the first page, so it is fetched by id
        await until(lambda: standin.count("get") >= 1)
        await until(lambda: not_in_flight(relay, ids[0]))
    assert receiver.requests == []


async def test_bad_credentials_are_loud_and_do_not_crash(standin, make_settings):
    """A 401 is never retried and polling backs off instead of hammering with bad keys."""
    standin.inject("401", path="list", times=50)
    async with running(make_settings()) as relay:
        await until(lambda: relay.pacing.auth_failures >= 1)
        await asyncio.sleep(0.6)  # six poll intervals
        assert relay.running
    assert standin.count("list") == 1
    assert relay.last_poll is None


async def test_budget_is_never_exceeded(standin, make_settings):
    """With RELAY_API_BUDGET_PER_HOUR=5, polls are spread out, wakes respect that, and forced polls never send a sixth request across a restart."""
    settings = make_settings(api_budget_per_hour="5")
    async with running(settings) as relay:
        await baseline(relay)
        await asyncio.sleep(0.5)
        assert standin.count("any") == 1, "the budget spreads polls (one per 900 s here)"
        for _ in range(8):
            relay.watch("aa_started_by_the_app")
            await asyncio.sleep(0.1)
        assert standin.count("any") == 1, "a wake never polls under the budget's floor"
        for _ in range(8):
            await relay.poll()
    async with running(settings) as relay:
        for _ in range(4):
            await relay.poll()
    assert standin.count("any") == 5


async def test_receiver_outage_then_recovery(standin, receiver, make_settings):
    """503s, a timeout and a reset from the receiver are retried until it recovers."""
    receiver.script.extend([503, "reset", ("retry-after", 503, 0), 500])
    action_id = standin.add_action()
    async with running(make_settings()) as relay:
        await baseline(relay)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1, timeout_s=15)
    ids = {r.event_id for r in receiver.requests if r.status}
    assert len(ids) == 1, "every attempt carries the same event id"
    assert len(receiver.requests) >= 5


async def test_410_dead_letters_and_replay_delivers(standin, receiver, make_settings):
    """A 410 stops delivery to that sink (dead letter); replay after the fix delivers it."""
    receiver.script.append(410)
    action_id = standin.add_action()
    settings = make_settings()
    async with running(settings) as relay:
        await baseline(relay)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: outbox_has(relay, dead=1))
        [dead] = await relay.stores.outbox.list(dead=True)
        assert "410" in (dead.last_error or "")
    async with running(settings) as relay:
        assert await relay.stores.outbox.replay(None, now=0) == 1
        await until(lambda: len(receiver.delivered) == 1)
    assert receiver.delivered[0].event_id == dead.event_id


async def test_deliveries_older_than_max_age_are_dead_lettered(standin, receiver, make_settings):
    """A receiver down for longer than RELAY_DELIVERY_MAX_AGE leaves the event in the dead-letter list."""
    receiver.default_status = 503
    action_id = standin.add_action()
    async with running(make_settings(delivery_max_age="1s")) as relay:
        await baseline(relay)
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: outbox_has(relay, dead=1))
    assert receiver.delivered == []
