"""Isolation: detection latency of healthy projects while one project answers 429 or times out.

One relay (the real CLI, ``python -m daemon run``) polls ``--projects`` projects (5 by default),
each behind a stand-in of its own served from this process (``bench/project_farm.py``), every
1 s (``RELAY_PACING=fixed``) with ``RELAY_API_TIMEOUT_S=1``. Three phases of ``--phase``
seconds (60 by default, the issue's minute), in one run:

- ``all healthy``: the baseline;
- ``p00 times out``: p00's stand-in holds every request 30 s (the relay gives up after 1 s);
- ``p00 answers 429``: p00's stand-in answers every request 429 with ``Retry-After: 60``.

In each phase every healthy project has ``--actions`` actions in flight that finish at
uniformly random moments over the phase; latency runs from ``complete_action`` on the
stand-in to the webhook at the receiver. p00 finishes a few actions too: theirs show the
fault took hold. After a fault phase its faults are cleared and the benchmark waits until
p00 lists successfully again ("recovered after"), so phases do not overlap.

    python -m bench.project_isolation [--projects 5] [--phase 60] [--actions 15]
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Section, base_parser, env_float, env_int, finish, fmt, markdown_table, percentile
from bench.project_farm import FirstArrivals, RelayChild, StandInFarm, relay_env, until
from daemon.demo.standin import VoucherifyStandIn

TROUBLED = "p00"
KIND = "CUSTOMERS.IMPORT_CSV"
OVERRIDES = {"RELAY_PACING": "fixed", "RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1", "RELAY_API_TIMEOUT_S": "1"}
PHASES: tuple[tuple[str, str | None, dict[str, object]], ...] = (
    ("all healthy", None, {}),
    (f"{TROUBLED} times out (held 30 s, timeout 1 s)", "timeout", {"delay_s": 30}),
    (f"{TROUBLED} answers 429, Retry-After 60 s", "429", {"retry_after": 60}),
)
TROUBLED_ACTIONS = 3
LISTED_WAIT_S = 2.5  # in-flight actions are listed before they finish


async def run_phase(
    farm: StandInFarm, hook: FirstArrivals, *, fault: str | None, params: dict[str, object], phase_s: float, actions: int, seed: int
) -> dict[str, Any]:
    """Start actions everywhere, turn p00's fault on, finish the actions at random moments over the phase, turn it off."""
    rng = random.Random(seed)
    plan = [
        (name, api.add_action(KIND, status="IN_PROGRESS", progress=10))
        for name, api in farm.apis.items()
        for _ in range(actions if name != TROUBLED else TROUBLED_ACTIONS)
    ]
    await asyncio.sleep(LISTED_WAIT_S)
    troubled = farm.apis[TROUBLED]
    requests_before = len(troubled.requests)
    lists_before = {name: api.count("list") for name, api in farm.apis.items()}
    if fault is not None:
        troubled.inject(fault, times=1_000_000, path="any", **params)
    started = time.time()
    finished: dict[str, float] = {}
    for offset, (name, action) in sorted((rng.uniform(0, phase_s), item) for item in plan):
        await asyncio.sleep(max(0.0, started + offset - time.time()))
        farm.apis[name].complete_action(action, example=KIND)
        finished[f"{name}/{action}"] = time.time()
    await asyncio.sleep(max(0.0, started + phase_s - time.time()))
    elapsed = time.time() - started
    lists = {name: api.count("list") - lists_before[name] for name, api in farm.apis.items()}
    statuses = ["held" if fault == "timeout" else str(r.status) for r in troubled.requests[requests_before:]]  # a held one answers after 30 s
    StandInFarm.clear_faults(troubled)
    recovered_s = await _recovery(troubled) if fault is not None else 0.0
    await until(lambda: all(key in hook.at for key in finished), timeout_s=30)
    healthy = [hook.at[k] - at for k, at in finished.items() if not k.startswith(TROUBLED + "/") and k in hook.at]
    own = [hook.at[k] - at for k, at in finished.items() if k.startswith(TROUBLED + "/") and k in hook.at]
    return {
        "healthy_s": healthy,
        "expected": sum(1 for k in finished if not k.startswith(TROUBLED + "/")),
        "troubled_s": own,
        "healthy_lists_per_s": min(n for name, n in lists.items() if name != TROUBLED) / elapsed,
        "troubled_requests": len(statuses),
        "troubled_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "recovered_s": recovered_s,
    }


async def _recovery(api: VoucherifyStandIn) -> float:
    """Return how long after its fault ended p00 listed successfully again."""
    ended, seen = time.time(), len(api.requests)
    await until(lambda: any(r.kind == "list" and r.status == 200 for r in api.requests[seen:]), timeout_s=120, step_s=0.1)
    return time.time() - ended


async def measure(*, projects: int, phase_s: float, actions: int, seed: int) -> Section:
    """Run one relay through every phase in turn."""
    farm, hook = StandInFarm(projects), FirstArrivals()
    await farm.start()
    hook_url = await hook.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
            relay = RelayChild(relay_env(Path(tmp), hook_url, farm.env(), OVERRIDES), Path(tmp) / "relay.log")
            await relay.start()
            try:
                await relay.until_every_project_polled(list(farm.apis), times=2)
                for n, (name, fault, params) in enumerate(PHASES):
                    print(f"project_isolation: {name}: {phase_s:.0f} s ...", flush=True)
                    results[name] = await run_phase(farm, hook, fault=fault, params=params, phase_s=phase_s, actions=actions, seed=seed + n)
            finally:
                exit_code = await relay.stop()
    finally:
        await hook.close()
        await farm.close()
    return build_section(results, projects=projects, phase_s=phase_s, actions=actions, exit_code=exit_code)


def build_section(results: dict[str, dict[str, Any]], *, projects: int, phase_s: float, actions: int, exit_code: int | None) -> Section:
    """Tabulate the healthy projects' latency per phase against the all-healthy phase."""
    header = [
        "phase",
        "healthy: received",
        "median s",
        "p95 s",
        "max s",
        "slowest healthy project's lists/s",
        f"{TROUBLED}: requests (statuses)",
        f"{TROUBLED}'s own events: latency s",
        f"{TROUBLED} listed again after",
    ]
    rows, summary = [], []
    base = results[PHASES[0][0]]["healthy_s"]
    for name, r in results.items():
        lat = r["healthy_s"]
        statuses = ", ".join(f"{s}: {k}" for s, k in r["troubled_statuses"].items())
        rows.append(
            [
                name,
                f"{len(lat)}/{r['expected']}",
                fmt(percentile(lat, 50), 3),
                fmt(percentile(lat, 95), 3),
                fmt(max(lat, default=float("nan")), 3),
                fmt(r["healthy_lists_per_s"], 2),
                f"{r['troubled_requests']} ({statuses})",
                ", ".join(f"{s:.1f}" for s in sorted(r["troubled_s"])) or "none received",
                "-" if name == PHASES[0][0] else f"{r['recovered_s']:.1f} s",
            ]
        )
        summary.append(
            [
                f"healthy projects' latency p50/p95/max, {name}",
                f"{percentile(lat, 50):.2f} / {percentile(lat, 95):.2f} / {max(lat):.2f} s",
                f"as all healthy: {percentile(base, 50):.2f} / {percentile(base, 95):.2f} s",
                f"p95 {percentile(lat, 95) / percentile(base, 95):.2f}x",
            ]
        )
    text = (
        f"One relay (the real CLI) polling {projects} projects, each behind a stand-in of its own, every 1 s (`RELAY_PACING=fixed`, "
        f"`RELAY_API_TIMEOUT_S=1`), through three phases of {phase_s:.0f} s in one run. In each phase every healthy project has "
        f"{actions} actions in flight that finish at uniformly random moments over the phase; latency runs from `complete_action` on "
        f"the stand-in to the webhook's arrival at the receiver. {TROUBLED} answers every request 429 (`Retry-After: 60`) or holds it "
        f'30 s (a timeout at 1 s) for the whole phase; it finishes {TROUBLED_ACTIONS} actions too ("own events"), and after the fault '
        f'ends the next phase waits until it lists successfully again. "held": requests the stand-in held (the relay gives up after 1 s). '
        f"Relay exit status on SIGTERM: {exit_code}."
    )
    return Section(
        name="project_isolation",
        title="Isolation: healthy projects' detection latency",
        summary=summary,
        markdown="\n\n".join([text, markdown_table(header, rows)]),
        raw=results,
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=env_int("BENCH_ISOLATION_PROJECTS", 5))
    parser.add_argument("--phase", type=float, default=env_float("BENCH_ISOLATION_PHASE_S", 60.0), help="seconds per phase (the fault lasts this long)")
    parser.add_argument("--actions", type=int, default=env_int("BENCH_ISOLATION_ACTIONS", 15), help="actions finished per healthy project per phase")
    parser.add_argument("--seed", type=int, default=env_int("BENCH_SEED", 6))
    args = parser.parse_args()
    section = asyncio.run(measure(projects=args.projects, phase_s=args.phase, actions=args.actions, seed=args.seed))
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
