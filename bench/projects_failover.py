"""Several projects on three PostgreSQL replicas: how their leases spread, and how long a failover of one replica's projects takes.

Three ``voucherify-relay run`` processes share one fresh database on the server named by
RELAY_BENCH_POSTGRES_URL (or RELAY_TEST_POSTGRES_URL) and poll ``--projects`` projects,
each on an in-process stand-in of its own (so a list request names its project), while
every project keeps completing actions. Each replica's ``/metrics``
(``voucherify_relay_leader{project=...}``) tells which projects it holds.

*Spread*: after the start, the time until every project is held exactly once and no replica
holds more than ceil(projects / 3), and the leases per replica. *Failover*: per run one
replica in turn (r1, r2, r3, r1, ...) gets the signal; per project it held, the time from
the signal to that project's first list request (by a new holder: the signalled replica
sends nothing after SIGKILL, and none after SIGTERM's release). The replica is then started
again and the bench waits for the spread to settle (it takes its share back through the
others' hand-overs) before the next run. At the end every completed action must have
arrived; copies of an event (same webhook-id) count as duplicate deliveries.

    python -m bench.projects_failover [--projects 12] [--kills 10] [--ttl 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import APP_TOKEN, Section, base_parser, env_int, finish, fmt, markdown_table
from bench.common import relay_env as bench_env
from bench.failover import complete_steadily, first_list_after, rejoin, replica_set, wait_delivered
from bench.pg_database import bench_server_url, temp_database
from bench.replica_set import Replica, ReplicaSet
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn, standins
from daemon.leadership import fair_share

MODES = (signal.SIGKILL, signal.SIGTERM)
REPLICAS = 3
LEADER = re.compile(r'^voucherify_relay_leader\{project="([^"]+)"\} 1\.0$', re.MULTILINE)


def projects_env(apis: dict[str, VoucherifyStandIn], hook_url: str, overrides: dict[str, str]) -> dict[str, str]:
    """Return the replicas' environment: the projects (RELAY_PROJECTS__<NAME>__*), no single-project variables."""
    env = bench_env(tempfile.gettempdir(), "", hook_url, overrides)
    for key in ("RELAY_VOUCHERIFY_API_URL", "RELAY_VOUCHERIFY_APP_ID", "RELAY_VOUCHERIFY_APP_TOKEN"):
        del env[key]
    for name, api in apis.items():
        prefix = f"RELAY_PROJECTS__{name.upper()}__"
        env |= {f"{prefix}APP_ID": f"app-{name}", f"{prefix}APP_TOKEN": APP_TOKEN, f"{prefix}API_URL": api.base_url}
    return env


async def held(replica: Replica) -> set[str]:
    """Return the projects ``replica`` reports holding on /metrics (none when it does not answer)."""
    if not replica.alive:
        return set()
    _, body = await asyncio.to_thread(replica.http_get, "/metrics")
    return set(LEADER.findall(body))


async def settled(replicas: ReplicaSet, projects: int, *, timeout_s: float) -> tuple[float, list[int]]:
    """Wait until every project is held exactly once and no replica holds more than its share; return the seconds waited and the leases per replica."""
    started, share = time.monotonic(), fair_share(projects, REPLICAS)
    while time.monotonic() - started < timeout_s:
        sets = [await held(r) for r in replicas.replicas]
        counts = Counter(p for s in sets for p in s)
        if len(counts) == projects and set(counts.values()) == {1} and max(map(len, sets)) <= share:
            return time.monotonic() - started, [len(s) for s in sets]
        await asyncio.sleep(0.1)
    msg = f"the spread did not settle within {timeout_s}s"
    raise TimeoutError(msg)


async def one_failover(apis: dict[str, VoucherifyStandIn], victim: Replica, signum: signal.Signals, *, timeout_s: float) -> list[float]:
    """Signal ``victim``; return, per project it held, the seconds until that project's next list request; bring it back."""
    mine = await held(victim)
    sent_at = datetime.now(UTC)
    victim.signal(signum)
    deadline, moved = time.monotonic() + timeout_s, dict[str, datetime]()
    while len(moved) < len(mine) and time.monotonic() < deadline:
        moved |= {p: at for p in mine if p not in moved and (at := first_list_after(apis[p], sent_at)) is not None}
        await asyncio.sleep(0.01)
    if len(moved) < len(mine):
        msg = f"{sorted(set(mine) - set(moved))} not polled within {timeout_s}s after {signum.name}"
        raise TimeoutError(msg)
    await rejoin(victim, signum)
    return [(at - sent_at).total_seconds() for at in moved.values()]


async def run_series(server: str, *, projects: int, kills: int, ttl_s: float) -> dict[str, object]:
    """Start three replicas on ``projects`` projects, then signal one replica at a time; return the figures."""
    names = [f"p{n:02d}" for n in range(projects)]
    hook, completed, stop = RecordingReceiver(), list[str](), asyncio.Event()
    await hook.start()
    times: dict[str, list[float]] = {}
    resettle: list[float] = []
    try:
        async with standins(names, app_token=APP_TOKEN) as apis:
            with temp_database(server, prefix="relay_bench") as url:
                env = projects_env(apis, hook.url, {"RELAY_STATE_URL": url, "RELAY_LEASE_TTL": f"{ttl_s}s", "RELAY_LOG_LEVEL": "info"})
                env |= {"RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1"}
                async with replica_set(env, REPLICAS) as replicas:
                    start_s, spread = await settled(replicas, projects, timeout_s=ttl_s * 6)
                    print(f"spread after start: {spread} in {start_s:.2f}s", flush=True)
                    flows = [asyncio.create_task(complete_steadily(api, completed, stop, every_s=0.2 * projects)) for api in apis.values()]
                    for signum in MODES:
                        times[signum.name] = []
                        for n in range(kills):
                            victim = replicas.replicas[n % REPLICAS]
                            times[signum.name] += await one_failover(apis, victim, signum, timeout_s=ttl_s * 3)
                            resettle.append((await settled(replicas, projects, timeout_s=ttl_s * 6))[0])
                            print(f"{signum.name} {n + 1}/{kills} ({victim.name}): last moved {times[signum.name][-1]:.2f}s", flush=True)
                    stop.set()
                    await asyncio.gather(*flows)
                    await wait_delivered(hook, completed, timeout_s=ttl_s * 3)
    finally:
        await hook.close()
    copies = Counter(r.envelope["data"]["id"] for r in hook.delivered)
    dups = len(hook.delivered) - len({r.event_id for r in hook.delivered})
    missing = sorted(set(completed) - set(copies))
    return {"start_s": start_s, "spread": spread, "times": times, "resettle": resettle, "events": len(completed), "duplicates": dups, "missing": missing}


def build_section(res: dict[str, object], *, projects: int, kills: int, ttl_s: float) -> Section:
    """Tabulate the spread, the failover times per moved project, and duplicates."""
    times: dict[str, list[float]] = res["times"]  # type: ignore[assignment]
    resettle: list[float] = res["resettle"]  # type: ignore[assignment]
    spread: list[int] = res["spread"]  # type: ignore[assignment]
    rows = [[name, kills, len(t), fmt(statistics.median(t)), fmt(max(t))] for name, t in times.items()]
    start_s: float = res["start_s"]  # type: ignore[assignment]
    share = fair_share(projects, REPLICAS)
    body = f"{projects} projects, 3 replicas, TTL {ttl_s:g} s. Spread after start: {spread} leases per replica, settled after {fmt(start_s)} s.\n\n"
    body += markdown_table(["signal to one replica", "runs", "projects moved", "median s", "max s"], rows)
    body += f"\n\nBack to {fair_share(projects, REPLICAS)} each after the restart: median {fmt(statistics.median(resettle))} s, max {fmt(max(resettle))} s. "
    body += f"Events completed: {res['events']}; missing: {len(res['missing'])}; duplicate deliveries: {res['duplicates']}.\n"  # type: ignore[arg-type]
    worst = {name: max(t) for name, t in times.items()}
    summary = [
        ["spread after start (leases per replica)", "/".join(map(str, spread)), f"<= {share} each", "met" if max(spread) <= share else "MISSED"],
        ["project failover after SIGKILL, max", f"{fmt(worst['SIGKILL'])} s", "<= TTL + 2 s", "met" if worst["SIGKILL"] <= ttl_s + 2 else "MISSED"],
        ["project hand-over after SIGTERM, max", f"{fmt(worst['SIGTERM'])} s", "< 1 s", "met" if worst["SIGTERM"] < 1 else "MISSED"],
        ["duplicate deliveries", str(res["duplicates"]), "0", "met" if res["duplicates"] == 0 else "MISSED"],
    ]
    raw = {"projects": projects, "kills": kills, "ttl_s": ttl_s} | {k: v for k, v in res.items() if k != "missing"} | {"missing": len(res["missing"])}  # type: ignore[arg-type]
    title = "Several projects on three PostgreSQL replicas: spread and failover"
    return Section(name="projects_failover", title=title, summary=summary, markdown=body, raw=raw)


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = base_parser(__doc__)
    parser.add_argument("--projects", type=int, default=12, help="projects, each on a stand-in of its own (12)")
    parser.add_argument("--kills", type=int, default=env_int("FAILOVER_KILLS", 10), help="signals per mode (10)")
    parser.add_argument("--ttl", type=float, default=10.0, help="RELAY_LEASE_TTL in seconds (10, the default)")
    return parser.parse_args()


def main() -> None:
    """Run the spread and failover series; print the section."""
    args = parse_args()
    res = asyncio.run(run_series(bench_server_url(), projects=args.projects, kills=args.kills, ttl_s=args.ttl))
    section = build_section(res, projects=args.projects, kills=args.kills, ttl_s=args.ttl)
    finish(section, args.json)
    print(section.markdown)


if __name__ == "__main__":
    main()
