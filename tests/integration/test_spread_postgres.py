"""Several projects on several replicas of one PostgreSQL database: the leases spread, a failover moves only the dead replica's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.elector import Elector
from daemon.leadership import timing_for
from daemon.settings import load_settings
from daemon.spread import Spreader
from daemon.store.postgres import open_postgres
from daemon.store.postgres_lease import PostgresLeaseStore
from tests.conftest import APP_TOKEN, FAST, relay_env, until

pytestmark = pytest.mark.postgres
PROJECTS = [f"p{n}" for n in range(6)]
TTL_S = 2.0


def held(relay: Relay) -> set[str]:
    """Return the projects whose lease this relay holds."""
    return {name for name, runner in relay.projects.items() if runner.elector.standing.term is not None}


@pytest.fixture
def settings_for(tmp_path, standin, receiver, pg_url):
    """Build one replica's settings: six projects (all on the stand-in), the shared PostgreSQL state."""

    def build(replica: str):
        env = relay_env(tmp_path, standin, receiver, STATE_URL=pg_url, REPLICA_ID=replica, LEASE_TTL=f"{TTL_S}s")
        del env["RELAY_VOUCHERIFY_APP_ID"], env["RELAY_VOUCHERIFY_APP_TOKEN"]
        for name in PROJECTS:
            prefix = f"RELAY_PROJECTS__{name.upper()}__"
            env |= {f"{prefix}APP_ID": "app-123", f"{prefix}APP_TOKEN": APP_TOKEN, f"{prefix}API_URL": standin.base_url}
        return load_settings(env)

    return build


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Stop every relay a test started."""
    async with AsyncExitStack() as exits:
        yield exits


async def start(settings, stack: AsyncExitStack) -> Relay:
    """Build and start one replica; stop it at the end of the test."""
    relay = await build_relay(settings, retry=FAST)
    await relay.start()
    stack.push_async_callback(relay.stop, grace_s=1)
    return relay


def followers_slowed(relay: Relay) -> bool:
    """Whether every follower of a replica at its share asks only at the holder's pace (the gate wakes them when that changes)."""
    followers = [r.elector for r in relay.projects.values() if r.elector.standing.term is None]
    return bool(followers) and all(e.pause_s() == e.timing.renew_every_s for e in followers)


def spread(relays: list[Relay]) -> list[int]:
    """Return how many leases each relay holds."""
    return [len(held(r)) for r in relays]


async def test_projects_spread_over_replicas_and_a_failover_moves_only_the_dead_ones(settings_for, stack):
    """Six projects on three replicas started in turn: two leases each, all held; when one stops, the others keep theirs and take its two."""
    first = await start(settings_for("r0"), stack)
    await until(lambda: spread([first]) == [6], timeout_s=10)
    relays = [first, await start(settings_for("r1"), stack), await start(settings_for("r2"), stack)]
    await until(lambda: sorted(spread(relays)) == [2, 2, 2], timeout_s=20)
    assert set().union(*(held(r) for r in relays)) == set(PROJECTS)
    assert [int(r.metrics.replicas._value.get()) for r in relays] == [3, 3, 3]
    await until(lambda: all(followers_slowed(r) for r in relays), timeout_s=2)
    kept = {id(r): held(r) for r in relays[1:]}
    await first.stop(grace_s=1)
    await until(lambda: sorted(spread(relays[1:])) == [3, 3], timeout_s=3 * TTL_S)
    for relay in relays[1:]:
        assert kept[id(relay)] <= held(relay), "a survivor kept its own projects"
    assert set().union(*(held(r) for r in relays[1:])) == set(PROJECTS)


async def keep_trying(elector: Elector) -> None:
    """Attempt on the elector's own cadence, as the relay's lease keeper does."""
    while True:
        await elector.attempt()
        await asyncio.sleep(elector.pause_s())


async def test_a_free_lease_is_taken_though_the_followers_for_leases_held_elsewhere_retry_in_step(pg_url, stack):
    """A replica one lease below its share takes the free lease at once, though two followers ask first each round for leases held elsewhere."""
    await (await open_postgres(pg_url)).close()  # the schema, with the lease table
    mine, other = PostgresLeaseStore(pg_url), PostgresLeaseStore(pg_url)
    stack.push_async_callback(mine.close)
    stack.push_async_callback(other.close)
    await other.heartbeat(holder="other", ttl_s=60)
    for name in ("poll:a", "poll:b"):
        assert await other.acquire_or_renew(name=name, holder="other", ttl_s=60) is not None
    timing = timing_for(TTL_S)
    spreader = Spreader(mine, holder="me", timing=timing, projects=4)
    electors = [Elector(store=mine, holder="me", timing=timing, fencing=True, name=f"poll:{n}", gate=spreader) for n in ("a", "b", "free", "held")]
    assert (await electors[3].attempt()).kind == "acquired"
    spreader.start(electors, hand_over=lambda _: asyncio.sleep(0))
    stack.push_async_callback(spreader.stop)
    await until(lambda: spreader.share == 2, timeout_s=5)
    tasks = [asyncio.create_task(keep_trying(e)) for e in electors]
    try:
        await until(lambda: electors[2].standing.term is not None, timeout_s=2)
        await asyncio.sleep(3 * timing.retry_every_s)
        assert [e.standing.term is not None for e in electors] == [False, False, True, True], "at its share, it takes no more"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_replica_that_leaves_grows_the_others_share_within_a_second_even_with_a_long_ttl(pg_url, stack):
    """With a 60 s lease TTL, when one of two replicas ends its membership the other's share is all projects within a second (not a renewal period)."""
    await (await open_postgres(pg_url)).close()
    timing = timing_for(60.0)
    spreaders = []
    for holder in ("a", "b"):
        store = PostgresLeaseStore(pg_url)
        stack.push_async_callback(store.close)
        spreaders.append(Spreader(store, holder=holder, timing=timing, projects=4))
        spreaders[-1].start([], hand_over=lambda _: asyncio.sleep(0))
    await until(lambda: [s.share for s in spreaders] == [2, 2], timeout_s=5)
    await spreaders[0].stop()
    left_at = time.monotonic()
    await until(lambda: spreaders[1].share == 4, timeout_s=5)
    await spreaders[1].stop()
    assert time.monotonic() - left_at < 1.0, "the share grew within a second"
