"""The dispatcher refills its send slots as sends finish, never sends a row twice, and keeps its claims alive on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from daemon.delivery_policy import DeliveryPolicy
from daemon.demo.receiver import RecordingReceiver
from daemon.model import Event
from daemon.outbox import Dispatcher
from daemon.sink_settings import SinkSettings
from daemon.sinks.webhook import WebhookSink
from daemon.store import CycleResult, Stores
from daemon.store.postgres import open_postgres
from daemon.store.sqlite import open_sqlite
from tests.conftest import WEBHOOK_SECRET, until


async def enqueue(stores: Stores, count: int) -> None:
    """Queue ``count`` events for the sink ``hook`` in one cycle."""
    events = [Event(id=f"evt_{n}", type="async_action.completed", timestamp="2026-11-23T11:00:00.000Z", data={"id": f"aa_{n}"}) for n in range(count)]
    await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(e, ["hook"]) for e in events]), now=time.time())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Lend an HTTP session for the sinks."""
    async with aiohttp.ClientSession() as http:
        yield http


def dispatcher(stores: Stores, receiver: RecordingReceiver, session: aiohttp.ClientSession, *, concurrency: int, **kwargs: float) -> Dispatcher:
    """Return a dispatcher with one webhook sink ``hook`` posting to ``receiver``."""
    spec = SinkSettings(kind="webhook", url=SecretStr(receiver.url), secret=SecretStr(WEBHOOK_SECRET), max_concurrency=concurrency)
    return Dispatcher(store=stores.outbox, sinks={"hook": WebhookSink("hook", spec, session)}, policy=DeliveryPolicy(), **kwargs)


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """Open a fresh SQLite state file."""
    stores = open_sqlite(tmp_path / "state.db")
    yield stores
    await stores.close()


async def test_a_stalled_send_holds_only_its_own_slot(sqlite_stores, receiver, session):
    """With concurrency 2 and the first receiver request stalled, the 50 other events are delivered and recorded before it answers."""
    receiver.script.append(("sleep", 5.0))
    await enqueue(sqlite_stores, 51)
    relay = dispatcher(sqlite_stores, receiver, session, concurrency=2)
    relay.kick()
    await until(lambda: len(receiver.requests) == 50, timeout_s=4)
    await until(_pending_is(sqlite_stores, 1), timeout_s=1)
    assert len(receiver.requests) == 50, "the stalled request has not been answered yet, and its answer is not waited for"
    assert await relay.wait_idle(10)
    assert (await sqlite_stores.outbox.stats()).pending == 0
    assert len(receiver.delivered_ids()) == 51


def _pending_is(stores: Stores, count: int) -> Callable[[], Awaitable[bool]]:
    """Return an awaitable predicate: the outbox holds ``count`` pending rows."""

    async def check() -> bool:
        return (await stores.outbox.stats()).pending == count

    return check


async def test_no_row_is_sent_twice_by_one_process(sqlite_stores, receiver, session):
    """On SQLite a row stays pending while it is sent, yet a drain kicked again and again sends each of 60 events once."""
    receiver.script.extend([("sleep", 0.02)] * 60)
    await enqueue(sqlite_stores, 60)
    relay = dispatcher(sqlite_stores, receiver, session, concurrency=4)
    relay.kick()
    while not await relay.wait_idle(0.01):
        relay.kick()
    assert Counter(Counter(r.event_id for r in receiver.requests).values()) == {1: 60}
    assert (await sqlite_stores.outbox.stats()).pending == 0


async def test_claims_outlive_slow_sends_on_a_shared_outbox(pg_url, receiver, session):
    """Two dispatchers on one PostgreSQL database, claims of 0.5 s and a receiver taking 1 s per request: every event arrives once."""
    first, second = await open_postgres(pg_url, claim_ttl_s=0.5), await open_postgres(pg_url, claim_ttl_s=0.5)
    try:
        receiver.script.extend([("sleep", 1.0)] * 20)
        await enqueue(first, 6)
        relays = [dispatcher(stores, receiver, session, concurrency=2, extend_every_s=0.15) for stores in (first, second)]
        deadline = time.monotonic() + 8
        while (await first.outbox.stats()).pending and time.monotonic() < deadline:
            for relay in relays:
                relay.kick()  # the relay's one-second tick, faster: the idle one keeps trying to claim
            await asyncio.sleep(0.1)
        for relay in relays:
            assert await relay.wait_idle(5)
    finally:
        await first.close()
        await second.close()
    copies = Counter(r.event_id for r in receiver.requests)
    assert copies == Counter({f"evt_{n}": 1 for n in range(6)}), f"sent more than once: {[i for i, n in copies.items() if n > 1]}"
