"""A fast model of the two simulated days for choosing pacing constants (issue 15): no HTTP, no store.

``bench.pacing_curve`` runs the real ``Poller`` against the stand-in: about 1.5 s per
simulated day. Choosing a constant needs hundreds of days, so this module models what
the list shows at each poll (each in-flight action's progress, ``created_at`` and
``updated_at``; each finished action once, with its duration) and feeds it to the same
pure ``daemon.pacing.succeeded`` the relay calls: about 0.03 s per day. It counts one
list per poll and one GET per finished action, as the Poller spends them on these days.
It is a model, checked against the real bench: on seed 6 the quiet day gives the same
426 requests and p95 16.1 s, the busy day 1,804 requests against the real 1,806 and the
same p95 25.8 s (``--check``; tests/integration/test_pacing_model.py keeps them close). Figures in docs/performance.md come from ``bench.pacing_curve``;
this module is how the constants behind them were compared.

    python -m bench.pacing_model [--seeds 40] [--fast 26] [--reference 0.5] [--check]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_calls import DAY_S, MONTH_FACTOR, NAIVE_INTERVAL_S, T0, ImportJob, plan_busy_workload, plan_workload, prior_days
from bench.common import markdown_table, percentile
from daemon import arrivals
from daemon.arrivals import History, Seen
from daemon.cadence import Cadence
from daemon.monthly import Cycle, idle_interval_s
from daemon.pacing import CycleFacts, Pacing, succeeded
from daemon.progress import Observed
from daemon.settings import PROGRESS_POLL_INTERVAL_S

Planner = Callable[..., list[ImportJob]]
DAYS: dict[str, tuple[Planner, int]] = {"quiet day": (plan_workload, 20), "busy day": (plan_busy_workload, 200)}


@dataclass
class Outcome:
    """One modelled day: requests spent and each import's detection time."""

    requests: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def p95_s(self) -> float:
        """Return the 95th percentile detection time."""
        return percentile(self.latencies_s, 95)


def listed(job: ImportJob, at: float) -> tuple[int, float]:
    """Return an in-flight import's progress and ``updated_at`` as the stand-in lists them at ``at`` (see bench.api_calls.Scenario)."""
    if at < job.start + 5.0:
        return 0, job.start
    progress, updated = 0, job.start + 5.0
    minutes = 0 if job.jumps else min(int((at - job.start) // 60), int(job.duration_s // 60))
    if minutes >= 1:
        progress, updated = min(99, int(100 * minutes * 60 / job.duration_s)), job.start + minutes * 60.0
    return progress, updated


def baseline_history(history: list[ImportJob]) -> History:
    """Return what the first poll learns: the last day's arrivals and the finished actions' durations."""
    day = [j for j in history if j.start >= T0 - DAY_S]
    return History(since=T0 - DAY_S, created=tuple(j.start for j in day), durations_s=tuple(j.duration_s for j in day))


def model_day(
    jobs: list[ImportJob],
    *,
    pacing: str = "progress",
    fast_s: float = PROGRESS_POLL_INTERVAL_S,
    idle_s: float = 300.0,
    month_budget: int | None = None,
    history: list[ImportJob] | None = None,
) -> Outcome:
    """Poll through one day as ``daemon.pacing.succeeded`` asks; return the requests and detection times."""
    cadence = Cadence.of(pacing=pacing, fast_s=fast_s, idle_s=idle_s)
    learned = baseline_history(history) if history and pacing == "progress" else History()
    state = Pacing(interval_s=fast_s, last_activity_at=-math.inf, history=learned)
    cycle = Cycle(start=T0, end=T0 + MONTH_FACTOR * DAY_S)
    seen: set[int] = set()
    detected: dict[int, float] = {}
    active: list[ImportJob] = []
    polls, gets, upcoming, now = 0, 0, 0, T0
    while now < T0 + DAY_S:
        polls += 1
        while upcoming < len(jobs) and jobs[upcoming].start <= now:
            active.append(jobs[upcoming])
            upcoming += 1
        observed, created, durations, running = [], [], [], []
        for job in active:
            if job.key not in seen:
                seen.add(job.key)
                created.append(job.start)
            if now < job.end:
                progress, updated = listed(job, now)
                observed.append(Observed(str(job.key), progress, job.start, updated))
                running.append(job)
            else:
                detected[job.key], gets = now - job.end, gets + 1
                durations.append(job.duration_s)
        active = running
        month_idle = None if month_budget is None else idle_interval_s(budget=month_budget, used=polls + gets, now=now, cycle=cycle, fast_s=fast_s)
        first = polls == 1
        facts = CycleFacts(
            in_flight=len(observed),
            transitions=len(created) + len(durations),
            first_run=first,
            observed=tuple(observed),
            idle_s=month_idle,
            seen=Seen() if first else Seen(created=tuple(created), durations_s=tuple(durations)),
        )
        state, decision = succeeded(state, facts, cadence=cadence, now=now)
        now += decision.interval_s
    latencies = [detected[j.key] for j in jobs if j.end <= T0 + DAY_S and j.key in detected]
    return Outcome(requests=polls + gets, latencies_s=latencies)


def naive_day(jobs: list[ImportJob]) -> Outcome:
    """Return the naive poller's requests (a list every 30 s, a GET of every in-flight action each time) and detection times."""
    polls = int(DAY_S / NAIVE_INTERVAL_S) + 1
    gets = sum(math.ceil((j.end - T0) / NAIVE_INTERVAL_S) - math.floor((j.start - T0) / NAIVE_INTERVAL_S) for j in jobs)
    latencies = [math.ceil((j.end - T0) / NAIVE_INTERVAL_S) * NAIVE_INTERVAL_S - (j.end - T0) for j in jobs]
    return Outcome(requests=polls + gets, latencies_s=latencies)


def goals(day: str, seed: int, *, fast_s: float = PROGRESS_POLL_INTERVAL_S) -> tuple[bool, bool, Outcome, Outcome, Outcome]:
    """Return whether each goal holds on one drawing of ``day``, with the progress, adaptive and naive outcomes."""
    planner, imports = DAYS[day]
    jobs = planner(imports_per_day=imports, days=1, seed=seed)
    history = prior_days(planner, imports_per_day=imports, seed=seed)
    naive = naive_day(jobs)
    adaptive = model_day(jobs, pacing="adaptive", fast_s=30.0)
    progress = model_day(jobs, fast_s=fast_s, history=history)
    monthly = model_day(jobs, fast_s=fast_s, history=history, month_budget=10_000)
    goal1 = progress.requests <= adaptive.requests and progress.p95_s <= naive.p95_s
    goal2 = monthly.requests <= naive.requests / 10 and monthly.p95_s <= adaptive.p95_s
    return goal1, goal2, progress, adaptive, naive


def sweep(seeds: range, *, fast_s: float = PROGRESS_POLL_INTERVAL_S) -> str:
    """Return, per day, how many drawings meet each goal with progress pacing's fast pace at ``fast_s``."""
    rows = []
    for day in DAYS:
        results = [goals(day, seed, fast_s=fast_s) for seed in seeds]
        ratios = sorted(p.requests / a.requests for _, _, p, a, _ in results)
        margins = sorted(p.p95_s - n.p95_s for _, _, p, _, n in results)
        rows.append(
            [
                day,
                f"{sum(r[0] for r in results)}/{len(seeds)}",
                f"{sum(r[1] for r in results)}/{len(seeds)}",
                f"{ratios[len(ratios) // 2]:.3f}",
                f"{margins[len(margins) // 2]:.1f}",
            ]
        )
    header = ["day", "goal 1 met", "goal 2 met (monthly 10,000)", "progress / adaptive requests, median", "p95 - naive p95, median s"]
    return markdown_table(header, rows)


def main() -> None:
    """Print the goals' sweep for the given constants (``--check``: seed 6 beside what bench.pacing_curve reports)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--fast", type=float, default=PROGRESS_POLL_INTERVAL_S, help="RELAY_POLL_INTERVAL under progress pacing")
    parser.add_argument("--reference", type=float, default=arrivals.REFERENCE_PER_HOUR, help="arrivals an hour at which idle = RELAY_IDLE_POLL_INTERVAL")
    parser.add_argument("--check", action="store_true", help="print seed 6's progress-defaults figures, to compare with bench.pacing_curve's")
    args = parser.parse_args()
    arrivals.REFERENCE_PER_HOUR = args.reference  # the model explores; the daemon's constant is unchanged on disk
    if args.check:
        for day, (planner, imports) in DAYS.items():
            jobs = planner(imports_per_day=imports, days=1, seed=6)
            out = model_day(jobs, fast_s=args.fast, history=prior_days(planner, imports_per_day=imports, seed=6))
            print(f"{day}, seed 6, progress defaults: {out.requests} requests, p95 {out.p95_s:.1f} s")
        return
    print(sweep(range(1, args.seeds + 1), fast_s=args.fast))


if __name__ == "__main__":
    main()
