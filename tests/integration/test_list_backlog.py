"""Bursts past RELAY_MAX_PAGES_PER_CYCLE: the list backlog is paged on until every action is reported."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from structlog.testing import capture_logs

from daemon.app import Relay
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.errors import ClientRequestError
from daemon.voucherify import VoucherifyClient
from tests.conftest import APP_TOKEN, baseline, running, until


def delivered_per_action(receiver: RecordingReceiver) -> Counter[str]:
    """Count the distinct webhook-ids delivered for each action id."""
    ids: dict[str, set[str]] = {}
    for received in receiver.delivered:
        ids.setdefault(received.envelope["data"]["id"], set()).add(received.event_id)
    return Counter({action: len(events) for action, events in ids.items()})


async def caught_up(relay: Relay) -> bool:
    """Whether the persisted cursor owes no list pages."""
    return (await relay.stores.actions.load_cursor()).backlog is None


async def has_backlog(relay: Relay) -> bool:
    """Whether the persisted cursor owes list pages."""
    return not await caught_up(relay)


async def test_a_burst_past_the_page_cap_is_delivered_in_full(standin, receiver, make_settings):
    """A cap of 2 pages and 700 actions created at once, then completed: all 700 arrive, one webhook-id each."""
    async with running(make_settings(max_pages_per_cycle="2")) as relay:
        await baseline(relay)
        ids = [standin.add_action("VOUCHERS.METADATA_UPDATE") for _ in range(700)]
        await until(lambda: has_backlog(relay))
        for action_id in ids:
            standin.complete_action(action_id)
        await until(lambda: len(delivered_per_action(receiver)) == 700, timeout_s=30)
        await until(lambda: caught_up(relay))
    per_action = delivered_per_action(receiver)
    assert set(per_action) == set(ids)
    assert set(per_action.values()) == {1}
    assert max(Counter(r.event_id for r in receiver.delivered).values()) == 1


async def test_new_actions_are_not_delayed_by_the_backlog(standin, receiver, make_settings):
    """While a backlog of 600 is owed, an action created and finished afterwards is reported in the next cycles."""
    async with running(make_settings(max_pages_per_cycle="2", poll_interval="0.3", idle_poll_interval="0.3")) as relay:
        await baseline(relay)
        for _ in range(600):
            standin.complete_action(standin.add_action("ORDERS.IMPORT"), example="ORDERS.IMPORT")
        await until(lambda: has_backlog(relay))
        late = standin.add_action("CUSTOMERS.IMPORT_CSV")
        standin.complete_action(late, example="CUSTOMERS.IMPORT_CSV")
        await until(lambda: late in delivered_per_action(receiver), timeout_s=5)
        assert not await caught_up(relay)
        await until(lambda: len(delivered_per_action(receiver)) == 601, timeout_s=30)


async def test_a_burst_that_keeps_growing_while_catching_up(standin, receiver, make_settings):
    """Actions keep arriving (and finishing) in waves while the relay catches up: each is reported exactly once."""
    ids: list[str] = []
    async with running(make_settings(max_pages_per_cycle="3")) as relay:
        await baseline(relay)
        for _ in range(5):
            wave = [standin.add_action("VOUCHERS.BULK_UPDATE") for _ in range(250)]
            ids += wave
            await asyncio.sleep(0.15)
            for action_id in wave:
                standin.complete_action(action_id, example="VOUCHERS.BULK_UPDATE")
        await until(lambda: len(delivered_per_action(receiver)) == len(ids), timeout_s=40)
        await until(lambda: caught_up(relay))
    per_action = delivered_per_action(receiver)
    assert set(per_action) == set(ids)
    assert set(per_action.values()) == {1}


async def test_a_capped_baseline_records_history_without_sending_it(standin, receiver, make_settings):
    """A first run past the cap sends nothing for 500 finished actions, yet reports those in its backlog that finish later."""
    old = datetime.now(UTC) - timedelta(hours=1)
    running_then = [standin.add_action("PRODUCTS.IMPORT_CSV", created_at=old + timedelta(seconds=i)) for i in range(3)]
    for i in range(500):
        standin.add_action("VOUCHERS.IMPORT_CSV", status="DONE", progress=100, created_at=old + timedelta(seconds=10 + i))
    async with running(make_settings(max_pages_per_cycle="2")) as relay:
        await baseline(relay)
        assert await has_backlog(relay)
        standin.complete_action(running_then[0], example="PRODUCTS.IMPORT_CSV")  # finishes before the backlog reaches it
        await until(lambda: caught_up(relay), timeout_s=10)
        standin.complete_action(running_then[1], example="PRODUCTS.IMPORT_CSV")  # finishes after it was recorded in flight
        await until(lambda: len(receiver.delivered) == 2)
        await asyncio.sleep(0.3)
    assert {r.envelope["data"]["id"] for r in receiver.delivered} == set(running_then[:2])


async def test_the_backlog_metric_and_log_lines_tell_how_far_behind(standin, make_settings):
    """list.backlog_started, the cycle line's backlog fields, the gauge and list.caught_up describe a catch-up."""
    with capture_logs() as lines:
        async with running(make_settings(max_pages_per_cycle="2")) as relay:
            await _catch_up_450(relay, standin)
            scrape = relay.metrics.render().decode()
            await until(lambda: relay.last_poll is not None and relay.last_poll.backlog_window_s is None)
            after = relay.metrics.render().decode()
    events = [line["event"] for line in lines]
    assert events.count("list.backlog_started") == 1
    assert events.count("list.caught_up") == 1
    assert any(line.get("backlog_window_s") for line in lines if line["event"] == "poll.completed")
    assert any(line.get("backlog_pages") for line in lines if line["event"] == "poll.completed")
    assert _gauge(scrape, "voucherify_relay_list_backlog_pages_owed") >= 1
    assert _gauge(scrape, "voucherify_relay_list_backlog_seconds") > 0
    assert _gauge(after, "voucherify_relay_list_backlog_seconds") == 0


async def _catch_up_450(relay: Relay, standin: VoucherifyStandIn) -> None:
    """Start a backlog of 450 actions and wait for a cycle that reports it."""
    await baseline(relay)
    for _ in range(450):
        standin.add_action("ORDERS.IMPORT")
    await until(lambda: relay.last_poll is not None and relay.last_poll.backlog_window_s is not None)


async def test_ids_that_are_not_plain_voucherify_ids_never_reach_a_url(standin: VoucherifyStandIn, receiver, make_settings):
    """A listed id like ../../../v1/x?y=1#f is skipped with list.invalid_entries; a normal action beside it is delivered."""
    with capture_logs() as lines:
        async with running(make_settings()) as relay:
            await baseline(relay)
            standin.add_action("VOUCHERS.IMPORT", id="../../../v1/x?y=1#f", status="DONE")
            standin.add_action("VOUCHERS.IMPORT", id="a" * 65, status="DONE")
            good = standin.add_action("VOUCHERS.IMPORT")
            standin.complete_action(good, example="VOUCHERS.IMPORT")
            await until(lambda: len(receiver.delivered) == 1)
    assert [r.kind for r in standin.requests if r.kind != "list"] == ["get"]
    assert all(r.path.startswith("/v1/async-actions") and ".." not in r.path for r in standin.requests)
    invalid = [line for line in lines if line["event"] == "list.invalid_entries"]
    assert invalid
    assert {line["skipped"] for line in invalid} == {2}
    assert "../../../v1" not in repr(lines)


def _gauge(scrape: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in scrape.splitlines() if line.startswith(name + '{project="default"} '))


async def test_the_client_refuses_an_id_that_is_not_plain(standin: VoucherifyStandIn):
    """get_action with a path-like or overlong id raises ClientRequestError without sending anything."""
    async with aiohttp.ClientSession() as session:
        client = VoucherifyClient(session, base_url=standin.base_url, app_id="app-123", app_token=APP_TOKEN)
        for bad in ("../../../v1/x?y=1#f", "a" * 65, "", "aa_1/../x", "aa 1"):
            with pytest.raises(ClientRequestError, match="not a plain Voucherify id"):
                await client.get_action(bad)
    assert standin.requests == []
