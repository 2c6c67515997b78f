"""Many Voucherify projects on one relay process: CPU per poll cycle, memory and requests per project.

The relay is the real CLI (``python -m daemon run``) in a child process, polling ``--projects``
projects (50 by default) and, in the same run, a baseline of the same relay with 1 project.
Every project has a stand-in of its own (``bench/project_farm.py``: keys of its own, 200
finished actions over 48 h, so a steady cycle is one list page), served from this process,
so the child's CPU counters hold the relay's work only. Polls are fixed at 1 s
(``RELAY_PACING=fixed``), so cycles are countable.

Per relay: a first run takes every project's baseline; the measured run restarts on that
state, waits until every project has polled, settles, then (1) a steady window: CPU time
(``/proc/<pid>/task/*/schedstat``), completed cycles (``poll.completed`` lines stamped
inside the window) and resident memory sampled every second; (2) a churn window: in a few
projects an action starts and finishes every 2 s. At the end: each project's list and GET
requests as its own stand-in counted them over the whole measured run, against the cycles
the relay logged and the actions finished.

    python -m bench.projects [--projects 50] [--window 30] [--churn 20] [--rounds 2]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Section, base_parser, env_float, env_int, finish, fmt, markdown_table, mean, rss_kib
from bench.idle import cpu_seconds, peak_rss_kib
from bench.project_farm import FirstArrivals, RelayChild, StandInFarm, relay_env, until

FIXED_1S = {"RELAY_PACING": "fixed", "RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1"}
SETTLE_S = 5.0
CHURN_EVERY_S = 2.0
CHURNING = 10  # at most this many projects see actions finish
KIND = "VOUCHERS.IMPORT_CSV"


async def run_relay(count: int, *, window_s: float, churn_s: float) -> dict[str, Any]:
    """Baseline, restart and measure one relay with ``count`` projects."""
    farm, hook = StandInFarm(count), FirstArrivals()
    await farm.start()
    hook_url = await hook.start()
    names = list(farm.apis)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-projects-") as tmp:
            env = relay_env(Path(tmp), hook_url, farm.env(), FIXED_1S)
            first = RelayChild(env, Path(tmp) / "baseline.log")
            await first.start()
            await first.until_every_project_polled(names)
            await first.stop()
            relay = RelayChild(env, Path(tmp) / "relay.log")
            before = farm.counts()
            started = time.monotonic()
            await relay.start()
            await relay.until_every_project_polled(names)
            ready_s = time.monotonic() - started
            await asyncio.sleep(SETTLE_S)
            out = await _steady(relay, window_s=window_s) | {"ready_s": ready_s, "projects": count}
            out |= await _churn(farm, hook, names[:CHURNING], churn_s=churn_s)
            out["exit"] = await relay.stop()
            out |= _requests(farm, relay, before)
    finally:
        await hook.close()
        await farm.close()
    return out


async def _steady(relay: RelayChild, *, window_s: float) -> dict[str, Any]:
    """CPU, cycles and RSS over a window where nothing changes."""
    cpu0, t0, own0 = cpu_seconds(relay.pid), time.time(), time.process_time()
    samples = []
    while time.time() - t0 < window_s:
        samples.append(rss_kib(relay.pid))
        await asyncio.sleep(min(1.0, max(0.0, t0 + window_s - time.time())))
    cpu1, t1, own1 = cpu_seconds(relay.pid), time.time(), time.process_time()
    stamps = [datetime.fromisoformat(line["timestamp"]).timestamp() for line in relay.lines("poll.completed")]
    return {
        "cpu_s": cpu1 - cpu0,
        "window_s": t1 - t0,
        "cycles": sum(1 for s in stamps if t0 <= s < t1),
        "rss_kib": mean(samples),
        "hwm_kib": peak_rss_kib(relay.pid),
        "standin_cpu_s": own1 - own0,
    }


async def _churn(farm: StandInFarm, hook: FirstArrivals, names: list[str], *, churn_s: float) -> dict[str, Any]:
    """In each of ``names``, start an action every 2 s and finish the one started before; wait for their webhooks."""
    running: dict[str, str] = {}
    finished: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < churn_s:
        for name in names:
            api = farm.apis[name]
            if name in running:
                api.complete_action(running[name], example=KIND)
                finished.append(f"{name}/{running[name]}")
            running[name] = api.add_action(KIND, status="IN_PROGRESS", progress=10)
        await asyncio.sleep(CHURN_EVERY_S)
    for name, action in running.items():
        farm.apis[name].complete_action(action, example=KIND)
        finished.append(f"{name}/{action}")
    await until(lambda: all(key in hook.at for key in finished), timeout_s=15)
    per_project = {name: sum(1 for key in finished if key.startswith(name + "/")) for name in names}
    return {"finished": per_project, "delivered": sum(1 for key in finished if key in hook.at)}


def _requests(farm: StandInFarm, relay: RelayChild, before: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Each project's requests over the measured run (its stand-in's count) against its cycles (the relay's log)."""
    after, cycles = farm.counts(), relay.cycles()
    return {
        "lists": {n: after[n]["list"] - before[n]["list"] for n in after},
        "gets": {n: after[n]["get"] - before[n]["get"] for n in after},
        "refused": sum(after[n]["refused"] for n in after),
        "run_cycles": {n: cycles.get(n, 0) for n in after},
        "logged_calls": sum(relay.cycles("api_calls").values()),
        "failed_cycles": sum(relay.failed_cycles().values()),
    }


def derive(r: dict[str, Any]) -> dict[str, float]:
    """Per-cycle and per-project figures from one relay run."""
    lists_per_cycle = [r["lists"][n] / r["run_cycles"][n] for n in r["lists"] if r["run_cycles"][n]]
    churned = [n for n, k in r["finished"].items() if k]
    quiet = [n for n in r["gets"] if n not in r["finished"]]
    return {
        "cpu_pct": r["cpu_s"] / r["window_s"] * 100,
        "cycles_per_s": r["cycles"] / r["window_s"],
        "cpu_ms_per_cycle": r["cpu_s"] * 1000 / r["cycles"],
        "lists_per_cycle_min": min(lists_per_cycle),
        "lists_per_cycle_max": max(lists_per_cycle),
        "lists_per_cycle_all": sum(r["lists"].values()) / sum(r["run_cycles"].values()),
        "gets_per_finished": sum(r["gets"][n] for n in churned) / sum(r["finished"][n] for n in churned),
        "gets_quiet": sum(r["gets"][n] for n in quiet),
        "finished": sum(r["finished"].values()),
        "rss_mib": r["rss_kib"] / 1024,
        "standin_cpu_pct": r["standin_cpu_s"] / r["window_s"] * 100,
    }


def build_section(runs: list[tuple[int, dict[str, Any]]], *, many: int, window_s: float, churn_s: float) -> Section:
    """Tabulate every run, then the per-project figures against the 1-project baseline."""
    header = [
        "round",
        "projects",
        "ready s",
        "cycles/s",
        "relay CPU %",
        "CPU ms per cycle",
        "RSS MiB",
        "lists per cycle (all / min-max per project)",
        "actions finished",
        "GETs per finished action",
        "GETs in quiet projects",
        "requests: relay's cycle lines / stand-ins",
        "failed cycles",
        "401s",
        "stand-ins' CPU % (not counted)",
    ]
    rows, derived = [], []
    for n, (count, r) in enumerate(runs):
        d = derive(r)
        derived.append((count, d))
        rows.append(
            [
                n // 2 + 1,
                count,
                fmt(r["ready_s"], 1),
                fmt(d["cycles_per_s"], 2),
                fmt(d["cpu_pct"], 1),
                fmt(d["cpu_ms_per_cycle"], 2),
                fmt(d["rss_mib"], 1),
                f"{d['lists_per_cycle_all']:.3f} / {d['lists_per_cycle_min']:.2f}-{d['lists_per_cycle_max']:.2f}",
                d["finished"],
                fmt(d["gets_per_finished"], 2),
                d["gets_quiet"],
                f"{r['logged_calls']:,} / {sum(r['lists'].values()) + sum(r['gets'].values()):,}",
                r["failed_cycles"],
                r["refused"],
                fmt(d["standin_cpu_pct"], 1),
            ]
        )
    one = [d for c, d in derived if c == 1]
    big = [d for c, d in derived if c == many]
    cpu1, cpun = median(d["cpu_ms_per_cycle"] for d in one), median(d["cpu_ms_per_cycle"] for d in big)
    rate1, raten = median(d["cpu_pct"] for d in one) * 10, median(d["cpu_pct"] for d in big) * 10  # CPU ms per wall second
    cyc1, cycn = median(d["cycles_per_s"] for d in one), median(d["cycles_per_s"] for d in big)
    marginal = (raten - rate1) / (cycn - cyc1)
    rss1, rssn = median(d["rss_mib"] for d in one), median(d["rss_mib"] for d in big)
    per_project_kib = (rssn - rss1) * 1024 / (many - 1)
    summary = [
        [f"CPU per cycle per project, {many} projects", f"{cpun:.2f} ms", f"1 project: {cpu1:.2f} ms", f"{cpun / cpu1:.2f}x"],
        [f"marginal CPU per cycle ({many} vs 1 project)", f"{marginal:.2f} ms", "flat", f"fixed cost {rate1 - cyc1 * marginal:.1f} ms/s"],
        [f"RSS per project ((RSS{many} - RSS1)/{many - 1})", f"{per_project_kib:.0f} KiB", f"RSS1 {rss1:.1f} MiB", f"RSS{many} {rssn:.1f} MiB"],
        [
            "lists per cycle / GETs per finished action",
            f"{median(d['lists_per_cycle_all'] for d in big):.3f} / {median(d['gets_per_finished'] for d in big):.2f}",
            "1 / 1",
            "",
        ],
    ]
    text = (
        f"The real CLI polling {many} projects, and a baseline of the same relay with 1 project, in the same run "
        f"(order 1, {many}, 1, {many}, ...). Each project has its own stand-in with its own keys and 200 finished actions over 48 h, "
        "served from the benchmark's process (its CPU is the last column, not counted in the relay's). Polls fixed at 1 s "
        "(`RELAY_PACING=fixed`, `RELAY_POLL_INTERVAL=1`). Each relay first takes every baseline, then restarts on that state; "
        f'after every project has polled and {SETTLE_S:.0f} s settle, a steady window of {window_s:.0f} s: "CPU ms per cycle" is the relay '
        "process's CPU time over the cycles it logged in the window (so it includes its fixed costs: the dispatcher's 1 s tick, "
        "lease renewals, the scheduler), RSS the mean of 1 s samples. "
        f"Then {churn_s:.0f} s in which, in up to {CHURNING} projects, an action starts and finishes every {CHURN_EVERY_S:.0f} s. "
        '"Lists per cycle" and "GETs" are counted by each project\'s stand-in over the whole measured run, against the cycles the '
        'relay logged (`poll.completed`, per project) and the actions finished there; "401s" would be a request sent with '
        "another project's keys."
    )
    markdown = "\n\n".join([text, markdown_table(header, rows)])
    return Section(name="projects", title=f"{many} projects on one process", summary=summary, markdown=markdown, raw={"runs": runs})


async def measure(*, many: int, rounds: int, window_s: float, churn_s: float) -> Section:
    """Run 1 and ``many`` projects in turn, ``rounds`` times."""
    runs = []
    for n in range(rounds):
        for count in (1, many):
            print(f"projects: round {n + 1}: {count} project(s), {window_s:.0f} s steady + {churn_s:.0f} s churn ...", flush=True)
            runs.append((count, await run_relay(count, window_s=window_s, churn_s=churn_s)))
    return build_section(runs, many=many, window_s=window_s, churn_s=churn_s)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=env_int("BENCH_PROJECTS", 50), help="projects on the measured relay (env BENCH_PROJECTS)")
    parser.add_argument("--window", type=float, default=env_float("BENCH_PROJECTS_WINDOW_S", 30.0), help="steady window, seconds")
    parser.add_argument("--churn", type=float, default=env_float("BENCH_PROJECTS_CHURN_S", 20.0), help="window with finishing actions, seconds")
    parser.add_argument("--rounds", type=int, default=env_int("BENCH_PROJECTS_ROUNDS", 2))
    args = parser.parse_args()
    section = asyncio.run(measure(many=args.projects, rounds=args.rounds, window_s=args.window, churn_s=args.churn))
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
