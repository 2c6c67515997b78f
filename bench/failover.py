"""Failover on PostgreSQL: three real replicas, the leader SIGKILLed, SIGSTOPped and SIGTERMed again and again.

Three ``voucherify-relay run`` processes share one fresh database on the server named by
RELAY_BENCH_POSTGRES_URL (or RELAY_TEST_POSTGRES_URL) and poll an in-process stand-in
while actions keep completing (one every 0.2 s), from the moment a replica has committed
the baseline cycle: an action that finished before it is history, which the relay
announces only with RELAY_BACKFILL, so counting it would report a loss that is not one
(it did: the 3 and 12 "missing" events of the first runs). Per mode the leader gets the signal
``--kills`` times; the failover time is from the signal to the first list request the
stand-in receives afterwards (a SIGSTOPped leader sends nothing, a killed one cannot).
A killed or terminated replica is started again; a stopped one gets SIGCONT once the
successor polls. At the end every completed action must have arrived; copies of an
event (same webhook-id) count as duplicate deliveries. Each replica's JSON log is kept in
a temporary directory (printed at the end); an undelivered action is printed with its
``actions`` and ``outbox`` rows and the stand-in's created_at/updated_at.

Then delivery throughput from the shared outbox: ``--events`` events enqueued in one
transaction, drained by one and then three replicas into a receiver in its own process,
next to a bare aiohttp loop posting the same bodies with the same concurrency (4, the
webhook sink's default) to the same receiver.

    python -m bench.failover [--kills 20] [--ttl 10] [--events 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.common import APP_ID, APP_TOKEN, Section, base_parser, env_int, finish, fmt, markdown_table, receiver_process, sample_events
from bench.common import relay_env as bench_env
from bench.idle import processes_cpu_s
from bench.pg_database import backends, bench_server_url, temp_database
from bench.replica_set import Replica, ReplicaSet
from bench.throughput import received, run_bare
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.store import CycleResult
from daemon.store.postgres import open_postgres

TYPE = "CUSTOMERS.IMPORT_CSV"
MODES = (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM)


@contextlib.asynccontextmanager
async def replica_set(env: dict[str, str], count: int, *, logs: Path | None = None) -> AsyncIterator[ReplicaSet]:
    """Run ``count`` replicas; stop them afterwards (and write each one's log into ``logs``, if given)."""
    replicas = ReplicaSet(env, count=count)
    await replicas.start()
    try:
        yield replicas
    finally:
        await replicas.stop()
        if logs is not None:
            keep_logs(replicas, logs)


def keep_logs(replicas: ReplicaSet, logs: Path) -> None:
    """Write each replica's JSON log (every run of it) to ``logs/<name>.log`` and say where."""
    for replica in replicas.replicas:
        (logs / f"{replica.name}.log").write_text("".join(replica.lines))
    print(f"failover: replica logs in {logs}", flush=True)


async def complete_steadily(standin: VoucherifyStandIn, completed: list[str], stop: asyncio.Event, *, every_s: float = 0.2) -> None:
    """Keep one action running and complete one every ``every_s`` until ``stop``."""
    running = standin.add_action(TYPE)
    while not stop.is_set():
        await asyncio.sleep(every_s)
        standin.complete_action(running, example=TYPE)
        completed.append(running)
        running = standin.add_action(TYPE)


def first_list_after(standin: VoucherifyStandIn, moment: datetime) -> datetime | None:
    """Return when the stand-in received its first list request after ``moment``."""
    return next((r.at for r in standin.requests if r.kind == "list" and r.at > moment), None)


async def one_failover(replicas: ReplicaSet, standin: VoucherifyStandIn, signum: signal.Signals, *, timeout_s: float) -> float:
    """Signal the leader; return the seconds until the next list request; bring the old leader back as a follower."""
    leader = await replicas.next_leader(timeout_s=timeout_s)
    await asyncio.sleep(0.5)
    sent_at = datetime.now(UTC)
    leader.signal(signum)
    deadline = time.monotonic() + timeout_s
    while (polled := first_list_after(standin, sent_at)) is None and time.monotonic() < deadline:  # noqa: ASYNC110 - the stand-in records
        await asyncio.sleep(0.01)
    if polled is None:
        msg = f"no list request within {timeout_s}s after {signum.name}"
        raise TimeoutError(msg)
    await rejoin(leader, signum)
    return (polled - sent_at).total_seconds()


async def rejoin(replica: Replica, signum: signal.Signals) -> None:
    """Bring a signalled leader back as a follower: SIGCONT, or a restart after it exited."""
    if signum == signal.SIGSTOP:
        replica.signal(signal.SIGCONT)
        return
    await replica.wait(timeout_s=30)
    await replica.start()


async def failovers(server: str, *, kills: int, ttl_s: float) -> dict[str, object]:
    """Run the kill, stop and term series on one replica set; return the figures."""
    standin, hook = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN), RecordingReceiver()
    await standin.start()
    await hook.start()
    completed: list[str] = []
    stop = asyncio.Event()
    times: dict[str, list[float]] = {}
    logs = Path(tempfile.mkdtemp(prefix="relay_failover_logs_"))
    try:
        with temp_database(server, prefix="relay_bench") as url:
            env = bench_env(
                tempfile.gettempdir(), standin.base_url, hook.url, {"RELAY_STATE_URL": url, "RELAY_LEASE_TTL": f"{ttl_s}s", "RELAY_LOG_LEVEL": "info"}
            )
            env |= {"RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1"}
            async with replica_set(env, 3, logs=logs) as replicas:
                await replicas.baseline(timeout_s=ttl_s * 3)  # actions finished before the baseline are history: the relay announces none of them
                flow = asyncio.create_task(complete_steadily(standin, completed, stop))
                for signum in MODES:
                    times[signum.name] = []
                    for n in range(kills):
                        times[signum.name].append(await one_failover(replicas, standin, signum, timeout_s=ttl_s * 3))
                        print(f"failover: {signum.name} {n + 1}/{kills}: {times[signum.name][-1]:.2f}s", flush=True)
                stop.set()
                await flow
                await wait_delivered(hook, completed, timeout_s=ttl_s * 3)
                late = where_missing(url, sorted(set(completed) - {r.envelope["data"]["id"] for r in hook.delivered}))
                for row in late:
                    action = standin.actions[str(row["action"])]
                    print(
                        f"failover: stand-in has {row['action']} (#{completed.index(str(row['action']))} of {len(completed)}): "
                        f"created {action['created_at']}, updated {action['updated_at']}",
                        flush=True,
                    )
                await wait_delivered(hook, completed, timeout_s=LATE_WAIT_S)
    finally:
        await hook.close()
        await standin.close()
    copies = Counter(r.envelope["data"]["id"] for r in hook.delivered)
    ids = {r.event_id for r in hook.delivered}
    missing = sorted(set(completed) - set(copies))
    return {
        "times": times,
        "events": len(completed),
        "deliveries": len(hook.delivered),
        "unique": len(ids),
        "missing": missing,
        "late": late,
        "copies": copies,
    }


LATE_WAIT_S = 130.0  # after the usual wait, wait this much longer for late deliveries (longer than any claim expiry)


def where_missing(url: str, action_ids: list[str]) -> list[dict[str, object]]:
    """Say where each action not yet delivered stands: its action row, its outbox row and that row's claim."""
    if not action_ids:
        return []
    query = (
        "SELECT a.id, a.status, o.status, o.attempts, o.last_error, o.claim_token IS NOT NULL, "
        "round(extract(epoch FROM o.claim_expires_at - now())::numeric, 1), round((o.next_attempt_at - extract(epoch FROM now()))::numeric, 1) "
        "FROM unnest(%s::text[]) AS m(id) LEFT JOIN actions a ON a.id = m.id LEFT JOIN outbox o ON o.action_id = m.id"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(query, (action_ids,)).fetchall()
    keys = ("action", "action_status", "outbox_status", "attempts", "last_error", "claimed", "claim_expires_in_s", "due_in_s")
    found = [dict(zip(keys, row, strict=True)) for row in rows]
    for row in found:
        print(f"failover: not delivered yet: {row}", flush=True)
    return found


async def wait_delivered(hook: RecordingReceiver, completed: list[str], *, timeout_s: float) -> None:
    """Wait until every completed action has arrived (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not {r.envelope["data"]["id"] for r in hook.delivered} >= set(completed):  # noqa: ASYNC110 - the receiver records
        await asyncio.sleep(0.1)


async def drain_rate(server: str, hook_url: str, *, events: int, replicas: int) -> dict[str, float]:
    """Enqueue ``events`` in one transaction; return the rate at which ``replicas`` replicas drain them, and CPU per event.

    The rate is events/s from the commit until the receiver has them all; CPU is the replicas'
    and the database backends', per event.
    """
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    await standin.start()
    try:
        with temp_database(server, prefix="relay_bench") as url:
            env = bench_env(tempfile.gettempdir(), standin.base_url, hook_url, {"RELAY_STATE_URL": url, "RELAY_LOG_LEVEL": "info"})
            async with replica_set(env, replicas) as running:
                await running.next_leader()
                await asyncio.sleep(1.0)  # every replica connected and idle
                pids = [r.proc.pid for r in running.replicas if r.proc is not None]
                store = await open_postgres(url)
                pg = backends(url)
                before = received(hook_url)
                await store.actions.commit_cycle(CycleResult(snapshots=[], events=[(e, ["webhook"]) for e in sample_events(events)]), now=time.time())
                # from the commit (rows visible, NOTIFY sent): the enqueue is not the deliverers' cost
                started, c0, p0 = time.perf_counter(), processes_cpu_s(pids), processes_cpu_s(pg)
                while received(hook_url) - before < events:  # noqa: ASYNC110 - another process receives
                    await asyncio.sleep(0.02)
                wall, cpu, pg_cpu = time.perf_counter() - started, processes_cpu_s(pids) - c0, processes_cpu_s(pg) - p0
                await store.close()
                return {"events_per_s": events / wall, "cpu_us": cpu * 1e6 / events, "db_us": pg_cpu * 1e6 / events}
    finally:
        await standin.close()


async def throughput(server: str, *, events: int) -> dict[str, float]:
    """Measure bare, one replica and three replicas against one receiver process."""
    with receiver_process() as hook_url:
        bodies = [e.body() for e in sample_events(events)]
        bare = (await run_bare(hook_url, bodies, concurrency=4))["events_per_s"]
        one = (await drain_rate(server, hook_url, events=events, replicas=1))["events_per_s"]
        three = (await drain_rate(server, hook_url, events=events, replicas=3))["events_per_s"]
    return {"bare": bare, "one": one, "three": three}


def build_section(fail: dict[str, object], rates: dict[str, float], *, kills: int, ttl_s: float, events: int) -> Section:
    """Tabulate the failover times, duplicates and throughput."""
    times: dict[str, list[float]] = fail["times"]  # type: ignore[assignment]
    rows = [[name, len(t), fmt(statistics.median(t)), fmt(max(t))] for name, t in times.items()]
    dups = int(fail["deliveries"]) - int(fail["unique"])  # type: ignore[call-overload]
    per_1000 = 1000 * dups / max(1, int(fail["events"]))  # type: ignore[call-overload]
    body = markdown_table(["signal to the leader", "runs", "median s", "max s"], rows)
    body += f"\n\nTTL {ttl_s:g} s. Events completed across the runs: {fail['events']}; missing: {len(fail['missing'])}; "  # type: ignore[arg-type]
    body += f"duplicate deliveries: {dups} ({per_1000:.1f} per 1,000 events), all under the first webhook-id.\n\n"
    late: list[dict[str, object]] = fail["late"]  # type: ignore[assignment]
    claimed = sum(1 for row in late if row["claimed"])
    still = len(fail["missing"])  # type: ignore[arg-type]
    body += f"Not delivered {ttl_s * 3:g} s after the last signal: {len(late)} ({claimed} of them under a claim); "
    body += f"still missing {LATE_WAIT_S:g} s later: {still}.\n\n"
    if rates:
        tput = [["bare aiohttp loop", fmt(rates["bare"], 0), "1.00"]]
        tput += [[f"{n} replica(s)", fmt(rates[k], 0), fmt(rates[k] / rates["bare"])] for n, k in ((1, "one"), (3, "three"))]
        body += markdown_table(["sender", "events/s", "x bare"], tput) + f"\n\n{events} events, concurrency 4 per replica.\n"
    raw = {"kills": kills, "ttl_s": ttl_s, "times": times, "duplicates_per_1000": per_1000, "missing": len(fail["missing"]), "late": late, "throughput": rates}  # type: ignore[arg-type]
    worst = {name: max(t) for name, t in times.items()}
    summary = [
        ["failover after SIGKILL, max", f"{fmt(worst['SIGKILL'])} s", "<= 12 s", "met" if worst["SIGKILL"] <= 12 else "MISSED"],
        ["failover after SIGSTOP, max", f"{fmt(worst['SIGSTOP'])} s", "<= 12 s", "met" if worst["SIGSTOP"] <= 12 else "MISSED"],
        ["handover after SIGTERM, max", f"{fmt(worst['SIGTERM'])} s", "< 1 s", "met" if worst["SIGTERM"] < 1 else "MISSED"],
        ["duplicates per 1,000 events", f"{per_1000:.1f}", "", ""],
    ]
    if rates:
        one = rates["one"] / rates["bare"]
        summary += [["1 replica / bare", fmt(one), ">= 0.8", "met" if one >= 0.8 else "MISSED"]]
        summary += [["3 replicas / bare", fmt(rates["three"] / rates["bare"]), "", ""]]
    return Section(name="failover", title="Failover and shared-outbox throughput on PostgreSQL", summary=summary, markdown=body, raw=raw)


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = base_parser(__doc__)
    parser.add_argument("--kills", type=int, default=env_int("FAILOVER_KILLS", 20), help="signals per mode (20)")
    parser.add_argument("--ttl", type=float, default=10.0, help="RELAY_LEASE_TTL in seconds (10, the default)")
    parser.add_argument("--events", type=int, default=2000, help="events for the throughput runs (2000; 0 skips them)")
    return parser.parse_args()


def main() -> None:
    """Run the failover series and the throughput runs; print the section."""
    args = parse_args()
    server = bench_server_url()
    rates = asyncio.run(throughput(server, events=args.events)) if args.events else {}
    print(f"throughput: {rates}", flush=True)
    fail = asyncio.run(failovers(server, kills=args.kills, ttl_s=args.ttl))
    section = build_section(fail, rates, kills=args.kills, ttl_s=args.ttl, events=args.events)
    finish(section, args.json)
    print(section.markdown)


if __name__ == "__main__":
    main()
