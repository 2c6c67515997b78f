"""Relays sharing one PostgreSQL polling lease: one polls, the others follow, handover and step-down.

Each relay keeps its own SQLite state here; only the lease is shared, so these tests see the
leadership alone (the shared PostgreSQL store is exercised by the multi-process tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import psycopg
import pytest

from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.elector import Elector
from daemon.errors import LeaseLostError
from daemon.leadership import timing_for
from daemon.store.postgres_lease import PostgresLeaseStore
from daemon.voucherify import RetryPolicy
from tests.conftest import WATCH_TOKEN, until
from tests.integration.test_lease_postgres import LEASE_TABLE

FAST = RetryPolicy(max_attempts=2, backoff_max_s=0.05, backoff_multiplier_s=0.01)
TTL_S = 2.0


@pytest.fixture(scope="module")
def lease_db(pg_database):
    """Create the lease table in this module's database."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(LEASE_TABLE)
    return pg_database


@pytest.fixture
def clear_lease(lease_db):
    """Start each test with no lease row."""
    with psycopg.connect(lease_db, autocommit=True) as conn:
        conn.execute("DELETE FROM relay_lease")
    return lease_db


@asynccontextmanager
async def replicas(make_settings, tmp_path, url: str, count: int, **overrides: str) -> AsyncIterator[list[Relay]]:
    """Run ``count`` relays, each with its own state file, all on one lease in ``url`` (``overrides``: more settings)."""
    async with AsyncExitStack() as stack:
        relays = []
        for n in range(count):
            (tmp_path / f"r{n}").mkdir()
            settings = make_settings(STATE_URL=f"sqlite:///{tmp_path}/r{n}/state.db", REPLICA_ID=f"r{n}", LEASE_TTL=f"{TTL_S}s", **overrides)
            elector = Elector(store=PostgresLeaseStore(url), holder=f"r{n}", timing=timing_for(TTL_S), fencing=True)
            relay = await build_relay(settings, retry=FAST, elector=elector)
            await relay.start()
            stack.push_async_callback(relay.stop, grace_s=1)
            relays.append(relay)
        yield relays


def leaders(relays: list[Relay]) -> list[Relay]:
    """Return the relays whose leader gauge reads 1."""
    return [r for r in relays if r.metrics.leader.labels(project="default")._value.get() == 1]


async def test_exactly_one_of_three_replicas_polls_and_the_others_are_ready(standin, make_settings, tmp_path, clear_lease):
    """Three replicas on one lease: one leader sends every list request, the followers send none and still answer ready."""
    async with replicas(make_settings, tmp_path, clear_lease, 3) as relays:
        await until(lambda: len(leaders(relays)) == 1 and standin.count("list") >= 3)
        (leader,) = leaders(relays)
        followers = [r for r in relays if r is not leader]
        assert leader.client.requests_sent == standin.count("list") + standin.count("get")
        assert all(f.client.requests_sent == 0 for f in followers)
        assert all(f.ready()[0] for f in followers), [f.ready() for f in followers]
        assert b'voucherify_relay_lease_term{project="default"} 1.0' in leader.metrics.render()


async def test_a_stopping_leader_hands_over_within_a_second(make_settings, tmp_path, clear_lease):
    """Stopping the leader (SIGTERM) releases the lease: the other replica polls within a second, not a TTL later."""
    async with replicas(make_settings, tmp_path, clear_lease, 2) as relays:
        await until(lambda: len(leaders(relays)) == 1)
        (leader,) = leaders(relays)
        (follower,) = [r for r in relays if r is not leader]
        await leader.stop(grace_s=1)
        stopped_at = time.monotonic()
        await until(lambda: follower.client.requests_sent > 0, timeout_s=TTL_S)
        assert time.monotonic() - stopped_at < 1.0
        assert follower.elector.standing.term == 2


async def test_a_leader_whose_lease_is_taken_steps_down_and_sends_nothing(standin, make_settings, tmp_path, clear_lease):
    """When another holder owns the lease row, the leader's next renewal is refused: it stops polling and its client refuses to send."""
    async with replicas(make_settings, tmp_path, clear_lease, 1) as (relay,):
        await until(lambda: relay.last_poll is not None)
        with psycopg.connect(clear_lease, autocommit=True) as conn:
            conn.execute("UPDATE relay_lease SET holder = 'elsewhere', term = term + 1, expires_at = now() + interval '1 hour'")
        await until(lambda: relay.metrics.leader.labels(project="default")._value.get() == 0, timeout_s=TTL_S)
        sent = standin.count("list")
        await asyncio.sleep(5 * relay.elector.timing.retry_every_s)
        assert standin.count("list") == sent
        with pytest.raises(LeaseLostError):
            relay.elector.permit()
        assert relay.ready()[0]


async def test_watch_on_a_follower_says_which_replica_to_ask(make_settings, tmp_path, clear_lease):
    """POST /watch on the leader is accepted; on a follower it answers 503 naming the leader gauge to look for, and polls nothing."""
    async with replicas(make_settings, tmp_path, clear_lease, 2, HTTP_LISTEN="127.0.0.1:0", WATCH_TOKEN=WATCH_TOKEN) as relays:
        await until(lambda: len(leaders(relays)) == 1)
        (leader,) = leaders(relays)
        (follower,) = [r for r in relays if r is not leader]
        answers = []
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {WATCH_TOKEN}"}) as http:
            for relay in (leader, follower):
                async with http.post(f"http://127.0.0.1:{relay.http_port}/watch", json={"action_id": "aa_1"}) as response:
                    answers.append((response.status, (await response.json())["detail"]))
    assert answers[0] == (202, "aa_1")
    assert answers[1][0] == 503
    assert 'voucherify_relay_leader{project="default"} is 1' in answers[1][1]
