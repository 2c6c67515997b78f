"""Detection latency: an action finishes -> its webhook is received, in real time.

A real ``Relay`` (in-process, the shipped scheduler and dispatcher) polls a stand-in
holding ``--actions`` actions in flight; the benchmark finishes them at uniformly random
moments over ``--window`` seconds and a local receiver notes when each event arrives.
With B list calls an hour, polls are 3600/B s apart and an action finishing at a random
moment waits on average half of that for the next poll: the floor for the mean is
3600/(2B) s. Two runs: polling every second (B = 3,600), and a fast poll interval
(0.25 s) under ``RELAY_API_BUDGET_PER_HOUR=7200``, where the budget sets the pace
(``daemon.cadence`` spreads list calls over 80% of the budget: B = 5,760).

    python -m bench.latency [--actions 100] [--window 60]
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import (
    APP_ID,
    APP_TOKEN,
    Section,
    base_parser,
    env_float,
    env_int,
    finish,
    fmt,
    markdown_table,
    mean,
    percentile,
    quiet_logs,
    relay_env,
)
from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.cadence import Cadence, next_poll
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.settings import load_settings

EXAMPLES = ("CUSTOMERS.IMPORT_CSV", "PRODUCTS.IMPORT_CSV", "VOUCHERS.IMPORT_CSV", "SKUS.IMPORT_CSV")
CONFIGS = (
    ("poll every 1 s", {"RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1"}),
    ("budget 7,200/h binds (poll 0.25 s)", {"RELAY_POLL_INTERVAL": "0.25", "RELAY_IDLE_POLL_INTERVAL": "0.25", "RELAY_API_BUDGET_PER_HOUR": "7200"}),
)


def first_arrivals(receiver: RecordingReceiver) -> dict[str, float]:
    """Return when each action's event first reached the receiver."""
    arrived: dict[str, float] = {}
    for received in receiver.delivered:
        arrived.setdefault(str(received.envelope["data"]["id"]), received.at)
    return arrived


def planned_lists_per_hour(env: dict[str, str]) -> float:
    """Return B: the list calls an hour the cadence allows while busy."""
    budget = env.get("RELAY_API_BUDGET_PER_HOUR")
    cadence = Cadence(fast_s=float(env["RELAY_POLL_INTERVAL"]), idle_s=float(env["RELAY_IDLE_POLL_INTERVAL"]), budget_per_hour=int(budget) if budget else None)
    return 3600.0 / next_poll(cadence, busy=True).interval_s


async def run_config(overrides: dict[str, str], *, actions: int, window_s: float, seed: int) -> dict[str, Any]:
    """Run one relay configuration; return the latencies and the list rate."""
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    api_url = await standin.start()
    receiver = RecordingReceiver(default_status=204)
    hook_url = await receiver.start()
    ids = [standin.add_action(EXAMPLES[n % len(EXAMPLES)], status="IN_PROGRESS", progress=10) for n in range(actions)]
    detected: dict[str, float] = {}
    finished: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        env = relay_env(tmp, api_url, hook_url, overrides)
        relay = await build_relay(load_settings(env))
        await relay.start()
        stamping = asyncio.create_task(_stamp_detections(relay, detected))
        try:
            await _until(lambda: relay.last_poll is not None, timeout_s=15)
            rng = random.Random(seed)
            offsets = sorted(rng.uniform(0, window_s) for _ in ids)
            lists_before, started = len(standin.requests), time.time()
            for n, (action_id, offset) in enumerate(zip(ids, offsets, strict=True)):
                await asyncio.sleep(max(0.0, started + offset - time.time()))
                standin.complete_action(action_id, example=EXAMPLES[n % len(EXAMPLES)])
                finished[action_id] = time.time()
            await _until(lambda: len(first_arrivals(receiver)) >= actions, timeout_s=30)
            list_times = [r.at.timestamp() for r in standin.requests[lists_before:] if r.kind == "list"]
        finally:
            stamping.cancel()
            await relay.stop(grace_s=2)
            await receiver.close()
            await standin.close()
    arrived = first_arrivals(receiver)
    return {
        "latencies_s": [arrived[i] - finished[i] for i in ids if i in arrived],
        "detect_s": [detected[i] - finished[i] for i in ids if i in detected],
        "next_list_s": [_next(list_times, finished[i]) - finished[i] for i in ids if i in detected],
        "deliver_s": [arrived[i] - detected[i] for i in ids if i in detected and i in arrived],
        "lists_per_hour_measured": _rate_per_hour(list_times),
        "lists_per_hour_planned": planned_lists_per_hour(env),
        "gets": standin.count("get"),
        "actions": actions,
    }


async def _stamp_detections(relay: Relay, detected: dict[str, float]) -> None:
    """Stamp each action's detection with the moment its cycle committed (the report's ``last_poll_ok_at``)."""
    seen = None
    while True:
        report = relay.last_poll
        if report is not None and report is not seen and relay.last_poll_ok_at is not None:
            seen = report
            for event in report.events:
                detected.setdefault(str(event.data.get("id")), relay.last_poll_ok_at)
        await asyncio.sleep(0.002)


def _next(moments: list[float], after: float) -> float:
    """Return the first moment at or after ``after`` (the stand-in stamps to the millisecond)."""
    index = bisect.bisect_left(moments, after - 0.001)
    return moments[index] if index < len(moments) else float("nan")


def _rate_per_hour(moments: list[float]) -> float:
    """Return events an hour from the mean gap between consecutive moments."""
    if len(moments) < 2:
        return float("nan")
    return 3600.0 * (len(moments) - 1) / (moments[-1] - moments[0])


async def _until(predicate: Callable[[], bool], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a plain predicate, bounded in time
        await asyncio.sleep(0.02)


def build_section(results: dict[str, dict[str, Any]], *, actions: int, window_s: float) -> Section:
    """Tabulate latencies against the floor the list rate allows."""
    header = [
        "configuration",
        "B planned (lists/h)",
        "B measured",
        "floor mean s 3600/(2B)",
        "floor at measured B",
        "mean s",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "of which: wait for the next list s",
        "that poll until the event is built s",
        "built to received s",
        "received",
        "GETs",
    ]
    rows, summary = [], []
    for name, r in results.items():
        lat = r["latencies_s"]
        floor = 3600.0 / (2 * r["lists_per_hour_planned"])
        rows.append(
            [
                name,
                fmt(r["lists_per_hour_planned"], 0),
                fmt(r["lists_per_hour_measured"], 0),
                fmt(floor, 3),
                fmt(3600.0 / (2 * r["lists_per_hour_measured"]), 3),
                fmt(mean(lat), 3),
                fmt(percentile(lat, 50), 3),
                fmt(percentile(lat, 95), 3),
                fmt(percentile(lat, 99), 3),
                fmt(max(lat, default=float("nan")), 3),
                fmt(mean(r["next_list_s"]), 3),
                fmt(mean(r["detect_s"]) - mean(r["next_list_s"]), 3),
                fmt(mean(r["deliver_s"]), 3),
                f"{len(lat)}/{r['actions']}",
                r["gets"],
            ]
        )
        over = mean(lat) - floor
        summary.append(
            [
                f"latency p50/p95/p99, {name}",
                f"{percentile(lat, 50):.2f} / {percentile(lat, 95):.2f} / {percentile(lat, 99):.2f} s",
                f"mean near floor {floor:.3f} s",
                f"mean {mean(lat):.3f} s ({over:+.3f})",
            ]
        )
    markdown = "\n\n".join(
        [
            (
                f"{actions} actions finishing at uniformly random moments over {window_s:.0f} s, per configuration. Latency runs from "
                "`complete_action` on the stand-in to the receiver reading the webhook. It splits into the wait for the next list request "
                "to reach the stand-in (what the poll schedule allows: its mean is the floor for the polls as they actually happened), "
                "that poll's own work until the event is built (the list response, the GET, normalizing), and the rest until the receiver "
                "has it (commit, dispatcher wake-up, signed POST). "
                '"B planned" is what `daemon.cadence.next_poll` allows while busy; "B measured" is 3600 s over the mean gap between '
                "list calls during the window (each interval is timed from the end of the previous poll, so it runs slightly under plan)."
            ),
            markdown_table(header, rows),
        ]
    )
    raw = {k: dict(v) for k, v in results.items()}
    return Section(name="latency", title="Detection latency", summary=summary, markdown=markdown, raw=raw)


async def measure(*, actions: int, window_s: float, seed: int) -> Section:
    """Run every configuration in turn."""
    results = {}
    for name, overrides in CONFIGS:
        print(f"latency: {name}: {actions} actions over {window_s:.0f} s ...", flush=True)
        results[name] = await run_config(overrides, actions=actions, window_s=window_s, seed=seed)
    return build_section(results, actions=actions, window_s=window_s)


def main() -> None:
    """Run the latency benchmark and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=env_int("BENCH_LATENCY_ACTIONS", 100), help="actions finished per run (env BENCH_LATENCY_ACTIONS)")
    parser.add_argument("--window", type=float, default=env_float("BENCH_LATENCY_WINDOW_S", 60.0), help="seconds they finish over (env BENCH_LATENCY_WINDOW_S)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("BENCH_SEED", "6")))
    args = parser.parse_args()
    quiet_logs()
    section = asyncio.run(measure(actions=args.actions, window_s=args.window, seed=args.seed))
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
