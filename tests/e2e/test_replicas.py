"""Three real relay processes on one PostgreSQL database: one poller, a shared outbox, failover by SIGKILL, SIGSTOP, SIGTERM.

Each replica reaches the stand-in through a TCP proxy of its own, so the test knows which
replica sent each Voucherify request. The lease TTL is 3 s here, so a dead leader is
replaced within TTL + a follower retry (3.3 s), well inside the TTL + 2 s the tests allow.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import urlsplit

import psycopg
import pytest

from bench.replica_set import Replica, ReplicaSet
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.store.postgres_schema import SCHEMA_VERSION
from tests.conftest import relay_env, until, watch_output
from tests.e2e.conftest import stop_replicas
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

TTL_S = 3.0
TYPE = "CUSTOMERS.IMPORT_CSV"
LIST = "GET /v1/async-actions?"


@asynccontextmanager
async def cluster(tmp_path, standin: VoucherifyStandIn, receiver: RecordingReceiver, state_url: str) -> AsyncIterator[tuple[ReplicaSet, list[TcpProxy]]]:
    """Run r1..r3 on ``state_url``, each reaching the stand-in through its own proxy; stop them all after the block."""
    api = urlsplit(standin.base_url)
    proxies = [TcpProxy(api.hostname or "127.0.0.1", api.port or 80) for _ in range(3)]
    for proxy in proxies:
        await proxy.start()
    env = relay_env(tmp_path, standin, receiver, state_url=state_url, lease_ttl=f"{TTL_S}s", poll_interval="0.2", idle_poll_interval="0.2")
    replicas = ReplicaSet(env, per_replica=[{"RELAY_VOUCHERIFY_API_URL": f"http://127.0.0.1:{p.port}"} for p in proxies])
    watch_output(replicas.output)
    await replicas.start()
    try:
        yield replicas, proxies
    finally:
        await stop_replicas(replicas, proxies)


def pollers(proxies: list[TcpProxy], *, since: float = 0.0) -> list[int]:
    """Return the indexes of the replicas that sent a list request after ``since``."""
    return [n for n, proxy in enumerate(proxies) if proxy.since(since, LIST)]


def assert_each_event_once_per_id(receiver: RecordingReceiver, action_ids: list[str], *, exactly_once: bool) -> None:
    """Every action arrived; each under one webhook-id only; once each when ``exactly_once``."""
    ids_per_action: dict[str, set[str]] = defaultdict(set)
    for received in receiver.delivered:
        ids_per_action[received.envelope["data"]["id"]].add(received.event_id)
    assert sorted(ids_per_action) == sorted(action_ids), "nothing lost, nothing unexpected"
    assert all(len(ids) == 1 for ids in ids_per_action.values()), "redeliveries only under the same webhook-id"
    if exactly_once:
        assert len(receiver.delivered) == len(action_ids), "each webhook-id delivered once"


async def test_three_replicas_one_poller_every_event_delivered_once(tmp_path, standin: VoucherifyStandIn, receiver: RecordingReceiver, pg_url):
    """Three replica processes on one database: only one sends list requests, one reports leader 1, every completion arrives once."""
    running = [standin.add_action(TYPE) for _ in range(6)]
    async with cluster(tmp_path, standin, receiver, pg_url) as (replicas, proxies):
        leader = await replicas.next_leader()
        await until(lambda: standin.count("list") >= 5, timeout_s=15)
        for action_id in running:
            standin.complete_action(action_id, example=TYPE)
        await until(lambda: len(receiver.delivered) >= len(running), timeout_s=15)
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        gauges = [await asyncio.to_thread(r.http_get, "/metrics") for r in replicas.replicas]
        assert [('voucherify_relay_leader{project="default"} 1.0' in body) for _, body in gauges] == [r is leader for r in replicas.replicas]
        assert pollers(proxies) == [replicas.replicas.index(leader)], "only the leader polls"
        ready = [(await asyncio.to_thread(r.http_get, "/readyz"))[0] for r in replicas.replicas]
        assert ready == [200, 200, 200], "followers are ready too"
    assert_each_event_once_per_id(receiver, running, exactly_once=True)


async def killed_and_replaced(replicas: ReplicaSet, proxies: list[TcpProxy], leader: Replica, signum: signal.Signals) -> tuple[Replica, float]:
    """Send ``signum`` to the leader; wait for another replica to hold the lease; return it and the seconds until its first list request."""
    sent_at = time.monotonic()
    leader.signal(signum)
    successor = await replicas.next_leader(other_than=leader, timeout_s=TTL_S + 5)
    index = replicas.replicas.index(successor)
    await until(lambda: proxies[index].since(sent_at, LIST), timeout_s=TTL_S + 5)
    return successor, proxies[index].since(sent_at, LIST)[0] - sent_at


async def test_sigkill_of_the_leader_three_times_loses_nothing_and_polling_resumes_within_ttl(tmp_path, standin, receiver, pg_url):
    """SIGKILL the leader thrice while actions complete: another replica polls within TTL + 2 s each time, all events arrive, copies share a webhook-id."""
    completed: list[str] = []
    async with cluster(tmp_path, standin, receiver, pg_url) as (replicas, proxies):
        leader = await replicas.next_leader()
        for _ in range(3):
            batch = [standin.add_action(TYPE) for _ in range(4)]
            seen = standin.count("list")
            await until(lambda seen=seen: standin.count("list") >= seen + 3, timeout_s=10)
            for action_id in batch[:2]:
                standin.complete_action(action_id, example=TYPE)
            successor, resumed_s = await killed_and_replaced(replicas, proxies, leader, signal.SIGKILL)
            for action_id in batch[2:]:
                standin.complete_action(action_id, example=TYPE)
            completed += batch
            assert resumed_s <= TTL_S + 2, f"polling resumed {resumed_s:.1f}s after the kill"
            await leader.wait()
            await leader.start()  # the orchestrator restarts it; it joins as a follower
            leader = successor
        await until(lambda: {r.envelope["data"]["id"] for r in receiver.delivered} >= set(completed), timeout_s=20)
        await asyncio.sleep(1.0)
    assert_each_event_once_per_id(receiver, completed, exactly_once=False)


def after(replica: Replica, event: str, moment: datetime) -> list[dict[str, object]]:
    """Return ``replica``'s log records named ``event`` stamped after ``moment``."""
    return [r for r in replica.events(event) if datetime.fromisoformat(str(r["timestamp"])) > moment]


async def test_a_leader_paused_past_its_lease_neither_polls_nor_commits_after_it_wakes(tmp_path, standin, receiver, pg_url):
    """SIGSTOP the leader past its lease: another replica takes over; after SIGCONT the old one logs lease.lost and sends nothing, commits nothing."""
    batch = [standin.add_action(TYPE) for _ in range(4)]
    async with cluster(tmp_path, standin, receiver, pg_url) as (replicas, proxies):
        old = await replicas.next_leader()
        await until(lambda: standin.count("list") >= 3, timeout_s=10)
        standin.complete_action(batch[0], example=TYPE)
        successor, _ = await killed_and_replaced(replicas, proxies, old, signal.SIGSTOP)
        for action_id in batch[1:]:
            standin.complete_action(action_id, example=TYPE)
        await asyncio.sleep(0.5)
        woke_at, woke_wall = time.monotonic(), datetime.now(UTC)
        old.signal(signal.SIGCONT)
        await until(lambda: bool(after(old, "lease.lost", woke_wall)), timeout_s=5)
        await until(lambda: {r.envelope["data"]["id"] for r in receiver.delivered} >= set(batch), timeout_s=15)
        await asyncio.sleep(0.5)
        index = replicas.replicas.index(old)
        assert proxies[index].since(woke_at, "GET ") == [], "the woken replica sent no Voucherify request"
        # a cycle under way at SIGSTOP may finish on waking, but only one with nothing to write (commit_cycle skips it);
        # anything it would have written is fenced off (poll.fenced)
        late = [(r["transitions"], r["events"]) for r in after(old, "poll.completed", woke_wall)]
        assert set(late) <= {(0, 0)}, f"the woken replica committed a cycle: {late}"
        assert successor.leading()
        assert pollers(proxies, since=woke_at) == [replicas.replicas.index(successor)]
    assert_each_event_once_per_id(receiver, batch, exactly_once=False)


async def test_replicas_started_together_on_an_empty_database_migrate_once_and_sigterm_hands_over_within_a_second(tmp_path, standin, receiver, pg_url):
    """Three replicas started at once on an empty database: one transaction migrates, none crashes; SIGTERM on the leader hands over in under a second."""
    async with cluster(tmp_path, standin, receiver, pg_url) as (replicas, proxies):
        leader = await replicas.next_leader()
        await until(lambda: all(r.started() for r in replicas.replicas), timeout_s=15)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT applied_at), min(version), max(version) FROM schema_migrations").fetchone()
        assert rows == (SCHEMA_VERSION, 1, 1, SCHEMA_VERSION), "every migration once, all in one transaction"
        successor, resumed_s = await killed_and_replaced(replicas, proxies, leader, signal.SIGTERM)
        assert await leader.wait() == 0
        assert leader.events("lease.released"), "the lease was released"
        assert resumed_s < 1.0, f"the next replica polled {resumed_s:.2f}s after SIGTERM"
        assert successor.leading()


async def ready_statuses(replicas: ReplicaSet) -> list[int]:
    """Return each replica's /readyz status."""
    return [(await asyncio.to_thread(r.http_get, "/readyz"))[0] for r in replicas.replicas]


async def test_replicas_ride_out_a_database_restart_and_lose_nothing(tmp_path, standin, receiver, pg_url):
    """Cut every PostgreSQL connection and refuse new ones for a while as actions complete: replicas go unready, then recover alone; each event arrives."""
    server = urlsplit(pg_url)
    database = TcpProxy(server.hostname or "127.0.0.1", server.port or 5432)
    await database.start()
    batch = [standin.add_action(TYPE) for _ in range(6)]
    try:
        async with cluster(tmp_path, standin, receiver, pg_url.replace(f":{server.port}/", f":{database.port}/")) as (replicas, _):
            await replicas.next_leader()
            await until(lambda: standin.count("list") >= 3, timeout_s=10)
            standin.complete_action(batch[0], example=TYPE)
            await until(lambda: len(receiver.delivered) >= 1, timeout_s=10)
            await database.cut()
            for action_id in batch[1:]:
                standin.complete_action(action_id, example=TYPE)
            await until(_all_not_ready(replicas), timeout_s=TTL_S + 12)  # slack for a loaded machine: the point is that they all go unready
            await database.restore()
            await until(_all_ready(replicas), timeout_s=20)
            await replicas.next_leader(timeout_s=10)
            await until(lambda: {r.envelope["data"]["id"] for r in receiver.delivered} >= set(batch), timeout_s=20)
            await asyncio.sleep(0.5)
    finally:
        await database.close()
    assert_each_event_once_per_id(receiver, batch, exactly_once=False)


def _all_not_ready(replicas: ReplicaSet) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(status == HTTPStatus.SERVICE_UNAVAILABLE for status in await ready_statuses(replicas))

    return check


def _all_ready(replicas: ReplicaSet) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(status == HTTPStatus.OK for status in await ready_statuses(replicas))

    return check
