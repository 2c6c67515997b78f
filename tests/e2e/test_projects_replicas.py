"""Six projects on three real replica processes of one PostgreSQL database: the leases spread 2/2/2, a SIGKILL moves only the dead one's.

Each project has a stand-in of its own (its own app id), and each replica reaches each
stand-in through a TCP proxy of its own, so the test knows which replica sent each list
request of each project. The lease TTL is 3 s, as in tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from urllib.parse import urlsplit

import pytest

from bench.replica_set import Replica, ReplicaSet
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn, standins
from tests.conftest import APP_TOKEN, relay_base_env, until, watch_output
from tests.e2e.conftest import stop_replicas
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

TTL_S = 3.0
TYPE = "CUSTOMERS.IMPORT_CSV"
LIST = "GET /v1/async-actions?"
PROJECTS = [f"p{n}" for n in range(6)]
LEADER = re.compile(r'^voucherify_relay_leader\{project="([^"]+)"\} 1\.0$', re.MULTILINE)

Proxies = list[dict[str, TcpProxy]]  # per replica: project -> the proxy it reaches that project's API through


@asynccontextmanager
async def cluster(tmp_path, apis: dict[str, VoucherifyStandIn], receiver: RecordingReceiver, state_url: str) -> AsyncIterator[tuple[ReplicaSet, Proxies]]:
    """Run r1..r3 with the six projects on ``state_url``, each replica reaching each API through its own proxy."""
    proxies: Proxies = []
    for _ in range(3):
        proxies.append({name: TcpProxy(urlsplit(api.base_url).hostname or "127.0.0.1", urlsplit(api.base_url).port or 80) for name, api in apis.items()})
    for proxy in (p for per in proxies for p in per.values()):
        await proxy.start()
    env = relay_base_env(tmp_path, receiver, state_url=state_url, lease_ttl=f"{TTL_S}s", poll_interval="0.2", idle_poll_interval="0.2")
    env |= {f"RELAY_PROJECTS__{name.upper()}__{k}": v for name in PROJECTS for k, v in (("APP_ID", f"app-{name}"), ("APP_TOKEN", APP_TOKEN))}
    urls = [{f"RELAY_PROJECTS__{name.upper()}__API_URL": f"http://127.0.0.1:{p.port}" for name, p in per.items()} for per in proxies]
    replicas = ReplicaSet(env, per_replica=urls)
    watch_output(replicas.output)
    await replicas.start()
    try:
        yield replicas, proxies
    finally:
        await stop_replicas(replicas, [p for per in proxies for p in per.values()])


async def held(replica: Replica) -> set[str]:
    """Return the projects whose lease ``replica`` reports holding on /metrics (none when it does not answer)."""
    status, body = await asyncio.to_thread(replica.http_get, "/metrics")
    return set(LEADER.findall(body)) if status == HTTPStatus.OK else set()


async def holdings(replicas: list[Replica]) -> list[set[str]]:
    """Return each replica's held projects."""
    return [await held(r) for r in replicas]


def spread_is(sizes: list[int]):
    """Return a check: the replicas hold these many leases each and every project is held exactly once."""

    async def check(replicas: list[Replica]) -> bool:
        sets = await holdings(replicas)
        counts = Counter(p for s in sets for p in s)
        return sorted(map(len, sets)) == sorted(sizes) and sorted(counts) == PROJECTS and set(counts.values()) == {1}

    return check


def listers(proxies: Proxies, project: str, *, since: float) -> set[int]:
    """Return the indexes of the replicas that sent a list request for ``project`` after the monotonic ``since``."""
    return {n for n, per in enumerate(proxies) if per[project].since(since, LIST)}


def first_list(proxies: Proxies, project: str, *, since: float) -> float | None:
    """Return when any replica first listed ``project`` after the monotonic ``since``."""
    return min((t for per in proxies for t in per[project].since(since, LIST)), default=None)


async def test_six_projects_spread_two_each_and_a_sigkill_moves_only_the_dead_replicas_two(tmp_path, receiver: RecordingReceiver, pg_url):
    """Six projects on three replicas: 2/2/2; after a SIGKILL the survivors keep theirs and poll its two within TTL + 2.5 s; one poller each; no duplicate."""
    async with standins(PROJECTS, app_token=APP_TOKEN) as apis:
        running = {name: [api.add_action(TYPE) for _ in range(2)] for name, api in apis.items()}
        async with cluster(tmp_path, apis, receiver, pg_url) as (replicas, proxies):
            everyone = replicas.replicas
            await until(lambda: spread_is([2, 2, 2])(everyone), timeout_s=15)
            settled_at = time.monotonic()
            before = await holdings(everyone)
            for name, api in apis.items():
                api.complete_action(running[name][0], example=TYPE)
            await until(lambda: len(receiver.delivered) >= len(PROJECTS), timeout_s=10)
            victim, survivors = everyone[0], everyone[1:]
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)
            await until(lambda: spread_is([3, 3])(survivors), timeout_s=TTL_S + 5)
            for name, api in apis.items():
                api.complete_action(running[name][1], example=TYPE)
            await until(lambda: len(receiver.delivered) >= 2 * len(PROJECTS), timeout_s=10)
            await asyncio.sleep(1.0)  # room for a duplicate or a second poller to show up
            after = await holdings(survivors)
            moved = {p: first_list(proxies, p, since=killed_at) for p in before[0]}
            for n, project in ((n, p) for n, s in enumerate(before) for p in s):
                until_kill = {i for i in listers(proxies, project, since=settled_at) if proxies[i][project].since(settled_at, LIST)[0] < killed_at}
                assert until_kill == {n}, f"{project}: one replica polled it while the spread held ({until_kill})"
                if n > 0:
                    assert listers(proxies, project, since=killed_at) == {n}, f"{project} stayed with r{n + 1} alone"
                else:
                    assert len(listers(proxies, project, since=killed_at) - {0}) == 1, f"{project}: one survivor took it over"
        await victim.wait()
    assert all(kept <= now for kept, now in zip(before[1:], after, strict=True)), f"survivors kept their own: {before} -> {after}"
    assert all(t is not None and t - killed_at <= TTL_S + 2.5 for t in moved.values()), f"the dead replica's projects resumed: {moved}"
    ids = Counter(r.event_id for r in receiver.delivered)
    assert sorted((r.envelope["data"]["project"], r.envelope["data"]["id"]) for r in receiver.delivered) == sorted(
        (p, a) for p, ids_ in running.items() for a in ids_
    )
    assert set(ids.values()) == {1}, "each webhook-id delivered once"
