"""Shared-outbox throughput: PostgreSQL with one and three replicas, and SQLite, against a bare aiohttp loop.

One receiver process answers 204. In the same run, round after round: the bare loop
(``bench.throughput.run_bare``, concurrency 4), the in-process ``Dispatcher`` draining a
SQLite file and a PostgreSQL database (``bench.throughput``'s method: enqueue, then
``dispatch_once``), and one and three real ``voucherify-relay run`` processes draining a
PostgreSQL outbox (``bench.failover.drain_rate``: rows enqueued in one transaction, timed
until the receiver has them all, wake-up included). Each figure is the best of
``--repeats`` rounds, and each is given as a ratio to the bare loop.

The machine these figures come from is shared, so rates swing by a factor of two between
rounds; CPU per event moves far less. So each run also reports the CPU time the senders
spent per event (this process, or the replica processes from /proc) and, for PostgreSQL,
the CPU time of the database's backends serving that database (from /proc, by the pids in
``pg_stat_activity``): the cost that decides throughput when the cores are the limit.

    RELAY_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python -m bench.outbox_throughput [--events 2000] [--repeats 3]
        [--receiver-delay-ms 20]   # a receiver that takes 20 ms per request, as a real one does
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from pydantic import SecretStr

from bench.common import (
    WEBHOOK_SECRET,
    Section,
    base_parser,
    env_int,
    finish,
    fmt,
    markdown_table,
    quiet_logs,
    receiver_process,
    sample_events,
)
from bench.failover import drain_rate
from bench.idle import processes_cpu_s
from bench.pg_database import backends, bench_server_url, temp_database
from bench.throughput import received, run_bare, run_dispatcher
from daemon.delivery_policy import DeliveryPolicy
from daemon.outbox import Dispatcher
from daemon.sink_settings import SinkSettings
from daemon.sinks.webhook import WebhookSink
from daemon.store import CycleResult
from daemon.store.postgres import open_postgres

CONCURRENCY = 4  # the webhook sink's default
SENDERS = ("bare", "sqlite", "postgres", "one", "three")
LABELS = {
    "bare": "bare aiohttp loop",
    "sqlite": "Dispatcher in process, SQLite",
    "postgres": "Dispatcher in process, PostgreSQL",
    "one": "1 replica process, PostgreSQL",
    "three": "3 replica processes, PostgreSQL",
}


async def run_postgres_dispatcher(server: str, url: str, events: list[Any]) -> dict[str, float]:
    """Enqueue the events in one transaction on a fresh database; return the in-process Dispatcher's rate and CPU per event."""
    with temp_database(server, prefix="relay_bench") as db_url:
        stores = await open_postgres(db_url)
        try:
            await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(e, ["webhook"]) for e in events]), now=time.time())
            async with aiohttp.ClientSession() as session:
                spec = SinkSettings(kind="webhook", url=SecretStr(url), secret=SecretStr(WEBHOOK_SECRET), max_concurrency=CONCURRENCY)
                dispatcher = Dispatcher(store=stores.outbox, sinks={"webhook": WebhookSink("webhook", spec, session)}, policy=DeliveryPolicy())
                pg = backends(db_url)
                before, started, c0, p0 = received(url), time.perf_counter(), time.process_time(), processes_cpu_s(pg)
                await asyncio.wait_for(dispatcher.dispatch_once(), 300)
                wall, cpu, pg_cpu = time.perf_counter() - started, time.process_time() - c0, processes_cpu_s(pg) - p0
                got = received(url) - before
        finally:
            await stores.close()
    if got < len(events):
        msg = f"postgres dispatcher: receiver got {got}/{len(events)}"
        raise RuntimeError(msg)
    return {"events_per_s": len(events) / wall, "cpu_us": cpu * 1e6 / len(events), "db_us": pg_cpu * 1e6 / len(events)}


async def one_round(server: str, url: str, *, events: int) -> dict[str, dict[str, float]]:
    """Measure every sender once against the same receiver."""
    batch = sample_events(events)
    bare = await run_bare(url, [e.body() for e in batch], concurrency=CONCURRENCY)
    figures = {"bare": {"events_per_s": bare["events_per_s"], "cpu_us": bare["cpu_ms_per_event"] * 1000, "db_us": 0.0}}
    sqlite = await run_dispatcher(url, batch, concurrency=CONCURRENCY)
    figures["sqlite"] = {"events_per_s": sqlite["events_per_s"], "cpu_us": sqlite["cpu_ms_per_event"] * 1000, "db_us": 0.0}
    figures["postgres"] = await run_postgres_dispatcher(server, url, batch)
    figures["one"] = await drain_rate(server, url, events=events, replicas=1)
    figures["three"] = await drain_rate(server, url, events=events, replicas=3)
    return figures


async def measure(server: str, *, events: int, repeats: int, delay_ms: float = 0.0) -> list[dict[str, dict[str, float]]]:
    """Run ``repeats`` rounds against a receiver answering after ``delay_ms``; return each round's figures."""
    rounds = []
    with receiver_process(delay_ms=delay_ms) as url:
        for n in range(repeats):
            figures = await one_round(server, url, events=events)
            rounds.append(figures)
            bare = figures["bare"]["events_per_s"]
            shown = ", ".join(f"{k} {f['events_per_s'] / bare:.2f}x {f['cpu_us']:.0f}+{f['db_us']:.0f}us" for k, f in figures.items())
            print(f"outbox_throughput: round {n + 1}/{repeats}: bare {bare:.0f}/s; {shown}", flush=True)
    return rounds


def build_section(rounds: list[dict[str, dict[str, float]]], *, events: int, repeats: int) -> Section:
    """Tabulate, per sender, the median over rounds of its rate as a ratio to that round's bare loop, and of its CPU per event."""
    rows = []
    ratio = {k: statistics.median(r[k]["events_per_s"] / r["bare"]["events_per_s"] for r in rounds) for k in SENDERS}
    for name in SENDERS:
        per_round = ", ".join(f"{r[name]['events_per_s'] / r['bare']['events_per_s']:.2f}" for r in rounds)
        cpu = statistics.median(r[name]["cpu_us"] for r in rounds)
        db = statistics.median(r[name]["db_us"] for r in rounds)
        rows.append([LABELS[name], fmt(ratio[name]), per_round, fmt(cpu, 0), fmt(db, 0) if db else "-"])
    header = ["sender", "x bare (median)", "x bare, each round", "sender CPU us/event", "PostgreSQL CPU us/event"]
    body = markdown_table(header, rows)
    body += f"\n\n{events:,} events per run, concurrency {CONCURRENCY}, {repeats} rounds; medians over rounds.\n"
    summary = [
        ["1 replica / bare", fmt(ratio["one"]), ">= 0.8", "met" if ratio["one"] >= 0.8 else "MISSED"],
        ["3 replicas / bare", fmt(ratio["three"]), "", ""],
        ["SQLite dispatcher / bare", fmt(ratio["sqlite"]), "", ""],
    ]
    return Section(name="outbox_throughput", title="Shared-outbox throughput", summary=summary, markdown=body, raw={"rounds": rounds})


def main() -> None:
    """Run the rounds and print the section."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=env_int("BENCH_EVENTS", 2000), help="events per run (2000)")
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 3), help="rounds (3)")
    parser.add_argument("--receiver-delay-ms", type=float, default=0.0, help="the receiver answers after this long (0: at once, CPU-bound)")
    args = parser.parse_args()
    quiet_logs()
    server = bench_server_url()
    rounds = asyncio.run(measure(server, events=args.events, repeats=args.repeats, delay_ms=args.receiver_delay_ms))
    section = build_section(rounds, events=args.events, repeats=args.repeats)
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
