"""Delivery throughput: drain a backlog of events to a local webhook receiver.

The outbox of a fresh SQLite file gets ``--events`` realistic events (the documented
examples, about 0.85 KB each) via ``commit_cycle``, one event per transaction; then the real ``Dispatcher`` with a
``WebhookSink`` (signing, per-row bookkeeping, a log line per delivery rendered as JSON
to /dev/null) drains it into a receiver running in its own process that answers 204.
The ceiling next to it: a bare aiohttp loop posting the same bodies to the same receiver
with the same concurrency (no signing, no database, no logging). Sender CPU time per
event comes from ``time.process_time`` of this process.

    python -m bench.throughput [--events 10000] [--concurrency 4,16] [--repeats 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from pydantic import SecretStr

from bench.common import WEBHOOK_SECRET, Section, base_parser, env_int, finish, fmt, markdown_table, quiet_logs, receiver_process, sample_events
from daemon.delivery_policy import DeliveryPolicy
from daemon.outbox import Dispatcher
from daemon.sink_settings import SinkSettings
from daemon.sinks.webhook import WebhookSink
from daemon.store import CycleResult
from daemon.store.sqlite import open_sqlite

DRAIN_TIMEOUT_S = 300.0


def received(url: str) -> int:
    """Ask the receiver how many posts it has read."""
    with urllib.request.urlopen(url.replace("/hook", "/count"), timeout=5) as response:  # noqa: S310 - our own loopback receiver
        return int(json.loads(response.read())["received"])


async def run_dispatcher(url: str, events: list[Any], *, concurrency: int) -> dict[str, float]:
    """Enqueue the events and let the real Dispatcher drain them; return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        store = open_sqlite(Path(tmp) / "state.db")
        started = time.perf_counter()
        now = time.time()
        for event in events:
            await store.actions.commit_cycle(CycleResult(snapshots=[], events=[(event, ["webhook"])]), now=now)
        enqueue_s = time.perf_counter() - started
        async with aiohttp.ClientSession(raise_for_status=False) as session:
            spec = SinkSettings(kind="webhook", url=SecretStr(url), secret=SecretStr(WEBHOOK_SECRET), max_concurrency=concurrency)
            dispatcher = Dispatcher(store=store.outbox, sinks={"webhook": WebhookSink("webhook", spec, session)}, policy=DeliveryPolicy())
            before = received(url)
            c0, w0 = time.process_time(), time.perf_counter()
            await asyncio.wait_for(dispatcher.dispatch_once(), DRAIN_TIMEOUT_S)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            got = received(url) - before
        pending = (await store.outbox.stats()).pending
        await store.close()
    if pending or dispatcher.stats.delivered != len(events):
        msg = f"dispatcher left {pending} pending, delivered {dispatcher.stats.delivered}/{len(events)}"
        raise RuntimeError(msg)
    return {
        "events_per_s": len(events) / wall,
        "wall_s": wall,
        "cpu_ms_per_event": cpu * 1000 / len(events),
        "received": got,
        "enqueue_per_s": len(events) / enqueue_s,
    }


async def run_bare(url: str, bodies: list[bytes], *, concurrency: int) -> dict[str, float]:
    """Post every body with ``concurrency`` workers on one session; the ceiling."""
    pending = iter(bodies)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for body in pending:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                ok += 200 <= response.status < 300

    async with aiohttp.ClientSession() as session:
        before = received(url)
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))), DRAIN_TIMEOUT_S)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        got = received(url) - before
    if ok != len(bodies):
        msg = f"bare loop: {ok}/{len(bodies)} answered 2xx"
        raise RuntimeError(msg)
    return {"events_per_s": len(bodies) / wall, "wall_s": wall, "cpu_ms_per_event": cpu * 1000 / len(bodies), "received": got}


async def measure(url: str, *, events: int, concurrencies: list[int], repeats: int) -> dict[int, dict[str, dict[str, float]]]:
    """Run both senders at each concurrency; keep the best of ``repeats`` runs of each."""
    batch = sample_events(events)
    bodies = [e.body() for e in batch]
    results: dict[int, dict[str, dict[str, float]]] = {}
    for concurrency in concurrencies:
        runs: dict[str, list[dict[str, float]]] = {"bare": [], "relay": [], "relay_warning": []}
        for _ in range(repeats):
            runs["bare"].append(await run_bare(url, bodies, concurrency=concurrency))
            runs["relay"].append(await run_dispatcher(url, batch, concurrency=concurrency))
            quiet_logs("warning")  # RELAY_LOG_LEVEL=warning: no delivery.sent line per event
            runs["relay_warning"].append(await run_dispatcher(url, batch, concurrency=concurrency))
            quiet_logs()
            rates = ", ".join(f"{name} {r[-1]['events_per_s']:.0f}/s" for name, r in runs.items())
            print(f"throughput: concurrency {concurrency}: {rates}", flush=True)
        results[concurrency] = {name: max(r, key=lambda x: x["events_per_s"]) for name, r in runs.items()}
    return results


def build_section(results: dict[int, dict[str, dict[str, float]]], *, events: int, repeats: int) -> Section:
    """Tabulate relay against the bare loop."""
    header = [
        "max_concurrency",
        "relay events/s",
        "bare aiohttp events/s",
        "relay / bare",
        "relay CPU ms/event",
        "bare CPU ms/event",
        "relay events/s at log level warning",
        "relay drain s",
        "enqueue events/s",
    ]
    rows, summary = [], []
    for concurrency, r in results.items():
        relay, bare = r["relay"], r["bare"]
        share = relay["events_per_s"] / bare["events_per_s"]
        rows.append(
            [
                concurrency,
                fmt(relay["events_per_s"], 0),
                fmt(bare["events_per_s"], 0),
                f"{share:.0%}",
                fmt(relay["cpu_ms_per_event"], 3),
                fmt(bare["cpu_ms_per_event"], 3),
                f"{fmt(r['relay_warning']['events_per_s'], 0)} ({fmt(r['relay_warning']['cpu_ms_per_event'], 3)} ms/event)",
                fmt(relay["wall_s"], 1),
                fmt(relay["enqueue_per_s"], 0),
            ]
        )
        summary.append(
            [
                f"delivery events/s, concurrency {concurrency}",
                f"{fmt(relay['events_per_s'], 0)} (bare {fmt(bare['events_per_s'], 0)}, {share:.0%})",
                "near bare (>= 80%)",
                "meets" if share >= 0.8 else "MISSES",
            ]
        )
    markdown = "\n\n".join(
        [
            (
                f"A backlog of {events:,} events (best of {repeats} runs each). The receiver is a separate process on the other core; "
                '"relay" is `Dispatcher` + `WebhookSink` draining the SQLite outbox (Standard Webhooks signature, one `UPDATE` per delivered row, '
                'one `delivery.sent` log line per event), "bare" is N aiohttp workers posting the same bodies on one session and nothing else. '
                '"at log level warning" is the relay again with `RELAY_LOG_LEVEL=warning`, which drops the per-event `delivery.sent` line. '
                '"enqueue" is `commit_cycle` with one event per transaction (the poller enqueues a cycle\'s events in one transaction instead).'
            ),
            markdown_table(header, rows),
        ]
    )
    return Section(name="throughput", title="Delivery throughput", summary=summary, markdown=markdown, raw={str(k): v for k, v in results.items()})


def main() -> None:
    """Run the throughput benchmark and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=env_int("BENCH_EVENTS", 10_000), help="backlog size (env BENCH_EVENTS)")
    parser.add_argument("--concurrency", default=os.environ.get("BENCH_CONCURRENCY", "4,16"), help="comma-separated max_concurrency values")
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 3))
    args = parser.parse_args()
    quiet_logs()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with receiver_process() as url:
        results = asyncio.run(measure(url, events=args.events, concurrencies=concurrencies, repeats=args.repeats))
    section = build_section(results, events=args.events, repeats=args.repeats)
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
