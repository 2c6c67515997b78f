"""Pacing strategies: requests against detection time on two simulated days (issue 15).

Each relay row is ``bench.api_calls.simulate_relay``: the real Poller over HTTP to the
stand-in on a simulated clock, paced by ``daemon.pacing.succeeded`` exactly as
``Relay._pace`` paces it. The naive poller (list every 30 s, GET every in-flight action)
runs in the same process on the same workload. The floor is a clairvoyant poller: one
list at each finish and one GET per finished action, detection 0 s.

    python -m bench.pacing_curve [--png docs/pacing-curve.png] [--markdown FILE] [--quick] [--seeds N]
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_calls import MONTH_FACTOR, ImportJob, SimResult, plan_busy_workload, plan_workload, prior_days, simulate_naive, simulate_relay
from bench.common import base_parser, fmt, markdown_table, mean, percentile, quiet_logs
from daemon.settings import PROGRESS_POLL_INTERVAL_S

Planner = Callable[..., list[ImportJob]]
DAYS: dict[str, tuple[Planner, int, str]] = {
    "quiet day": (plan_workload, 20, "20 imports of 2-10 min, progress every minute"),
    "busy day": (plan_busy_workload, 200, "200 imports: a quarter under a minute, the rest 1-15 min; a fifth report no progress"),
}
PROGRESS_FAST_S = PROGRESS_POLL_INTERVAL_S  # RELAY_POLL_INTERVAL's default under progress pacing
NUDGED = "progress, idle 3600 s, the application nudges POST /watch at each start"
CONFIGS = (  # name, pacing, fast s, idle s, monthly budget, learns from the project's history, nudged
    ("fixed 30 s", "fixed", 30.0, 30.0, None, True, False),
    ("adaptive, defaults (30 s / 300 s)", "adaptive", 30.0, 300.0, None, True, False),
    ("progress, defaults (26 s / 300 s)", "progress", PROGRESS_FAST_S, 300.0, None, True, False),
    ("progress, monthly budget 10,000", "progress", PROGRESS_FAST_S, 300.0, 10_000, True, False),
    ("progress, defaults, new project (no history)", "progress", PROGRESS_FAST_S, 300.0, None, False, False),
    (NUDGED, "progress", PROGRESS_FAST_S, 3600.0, None, True, True),
)
CURVE_IDLE_S = (60.0, 120.0, 180.0, 300.0, 450.0, 600.0)
CURVE_STRATEGIES = ("fixed", "adaptive", "progress")  # fixed: one poll every "idle" seconds


@dataclass(frozen=True, slots=True)
class Point:
    """One run's cost and detection times."""

    label: str
    requests_per_day: float
    mean_s: float
    p50_s: float
    p95_s: float
    max_s: float
    detected: str

    @classmethod
    def of(cls, label: str, r: SimResult) -> Point:
        """Summarise a simulation (one simulated day)."""
        lat = r.latencies_s
        return cls(label, r.total, mean(lat), percentile(lat, 50), percentile(lat, 95), max(lat, default=math.nan), f"{len(lat)}/{r.finished}")


async def run_day(day: str, *, seed: int, curve: tuple[float, ...]) -> tuple[list[Point], list[tuple[str, float, Point]], Point]:
    """Simulate one day: the table's configurations plus the naive poller, the curve, and the floor."""
    planner, imports, _ = DAYS[day]
    jobs = planner(imports_per_day=imports, days=1, seed=seed)
    history = prior_days(planner, imports_per_day=imports, seed=seed)
    table = []
    for name, pacing, fast_s, idle_s, budget, learns, nudge in CONFIGS:
        kept = history if learns else []
        result = await simulate_relay(jobs, days=1, fast_s=fast_s, idle_s=idle_s, name=name, pacing=pacing, month_budget=budget, history=kept, nudge=nudge)
        table.append(Point.of(name, result))
    table.append(Point.of("naive: list every 30 s + GET each in-flight action", await simulate_naive(jobs, days=1, history=history)))
    points = []
    for strategy in CURVE_STRATEGIES:
        for idle_s in curve:
            fast_s = {"fixed": idle_s, "adaptive": 30.0, "progress": PROGRESS_FAST_S}[strategy]
            result = await simulate_relay(jobs, days=1, fast_s=fast_s, idle_s=idle_s, name=strategy, pacing=strategy, history=history)
            points.append((strategy, idle_s, Point.of(strategy, result)))
    finishes = len({round(j.end) for j in jobs})
    floor = Point("floor (clairvoyant)", finishes + len(jobs), 0.0, 0.0, 0.0, 0.0, f"{len(jobs)}/{len(jobs)}")
    return table, points, floor


def day_markdown(day: str, table: list[Point], points: list[tuple[str, float, Point]], floor: Point) -> str:
    """Render one day's table, the curve's table and the goals."""
    naive, adaptive, progress, monthly = table[-1], table[1], table[2], table[3]
    nudged = next(p for p in table if p.label == NUDGED)
    rows = [_row(p, floor=floor) for p in [*table, floor]]
    header = ["configuration", "requests/day", "requests/month", "x floor", "detected", "mean s", "p50 s", "p95 s", "max s"]
    curve_rows = [[s, fmt(i, 0), fmt(p.requests_per_day, 0), fmt(p.p95_s, 1), fmt(p.mean_s, 1), fmt(p.max_s, 0)] for s, i, p in points]
    goal1 = progress.requests_per_day <= adaptive.requests_per_day and progress.p95_s <= naive.p95_s
    tenth = naive.requests_per_day / 10
    cheap = [p for s, _, p in points if s == "progress" and p.requests_per_day <= tenth] + ([monthly] if monthly.requests_per_day <= tenth else [])
    best = min(cheap, key=lambda p: p.p95_s, default=None)
    goal2 = best is not None and best.p95_s <= adaptive.p95_s
    goals = [
        [
            "1. no more requests than adaptive defaults, p95 no worse than naive",
            (
                f"progress defaults: {fmt(progress.requests_per_day, 0)} vs {fmt(adaptive.requests_per_day, 0)} requests/day; "
                f"p95 {fmt(progress.p95_s, 1)} s vs naive {fmt(naive.p95_s, 1)} s"
            ),
            "meets" if goal1 else "MISSES",
        ],
        [
            f"2. at most a tenth of naive's requests ({fmt(tenth, 0)}/day), p95 no worse than adaptive defaults ({fmt(adaptive.p95_s, 1)} s)",
            "no progress point within that many requests"
            if best is None
            else f"best: {fmt(best.requests_per_day, 0)} requests/day with p95 {fmt(best.p95_s, 1)} s ({best.label})",
            "meets" if goal2 else "MISSES",
        ],
        [
            "2, when the application calls POST /watch as it starts each import",
            f"{fmt(nudged.requests_per_day, 0)} requests/day with p95 {fmt(nudged.p95_s, 1)} s ({NUDGED})",
            "meets" if nudged.requests_per_day <= tenth and nudged.p95_s <= adaptive.p95_s else "MISSES",
        ],
    ]
    return "\n\n".join(
        [
            f"### {day}: {DAYS[day][2]}",
            markdown_table(header, rows),
            "Requests/day against p95 detection for idle intervals 60-600 s (fixed: one poll every that many seconds):",
            markdown_table(["strategy", "idle s", "requests/day", "p95 s", "mean s", "max s"], curve_rows),
            markdown_table(["goal", "figures", "verdict"], goals),
        ]
    )


def _row(p: Point, *, floor: Point) -> list[str]:
    return [
        p.label,
        fmt(p.requests_per_day, 0),
        fmt(p.requests_per_day * MONTH_FACTOR, 0),
        f"{p.requests_per_day / floor.requests_per_day:.1f}x",
        p.detected,
        fmt(p.mean_s, 1),
        fmt(p.p50_s, 1),
        fmt(p.p95_s, 1),
        fmt(p.max_s, 0),
    ]


def draw(days: dict[str, tuple[list[Point], list[tuple[str, float, Point]], Point]], png: Path) -> None:
    """Draw requests/day against p95 detection, one panel per day (matplotlib: the ``bench`` extra)."""
    import matplotlib as mpl  # noqa: PLC0415 - optional: only the bench needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(days), figsize=(6 * len(days), 4.5))
    for ax, (day, (table, points, floor)) in zip(axes, days.items(), strict=True):
        for strategy in CURVE_STRATEGIES:
            line = [(p.requests_per_day, p.p95_s, i) for s, i, p in points if s == strategy]
            ax.plot([x for x, _, _ in line], [y for _, y, _ in line], marker="o", label=strategy)
            for x, y, i in line[:: len(line) - 1]:
                ax.annotate(f"{i:g} s", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        naive, monthly = table[-1], table[3]
        ax.scatter([naive.requests_per_day], [naive.p95_s], marker="s", color="black", label="naive 30 s", zorder=3)
        ax.scatter([monthly.requests_per_day], [monthly.p95_s], marker="*", s=120, color="purple", label="monthly 10,000", zorder=3)
        nudged = next(p for p in table if p.label == NUDGED)
        ax.scatter([nudged.requests_per_day], [nudged.p95_s], marker="^", s=70, color="red", label="nudged by the app, idle 3600 s", zorder=3)
        ax.scatter([floor.requests_per_day], [floor.p95_s], marker="D", color="green", label="floor (clairvoyant)", zorder=3)
        ax.set_xscale("log")
        ax.set(title=day, xlabel="requests per day (log)", ylabel="p95 detection time, s")
        ax.grid(visible=True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


async def sweep(seeds: range) -> str:
    """Check both goals on many drawings of each day (the real Poller, as above): how often each holds, not one day's luck."""
    rows = []
    for day, (planner, imports, _) in DAYS.items():
        met1 = met2 = met2_nudged = 0
        ratios, margins = [], []
        for seed in seeds:
            jobs = planner(imports_per_day=imports, days=1, seed=seed)
            history = prior_days(planner, imports_per_day=imports, seed=seed)
            naive = Point.of("naive", await simulate_naive(jobs, days=1, history=history))
            runs = [
                await simulate_relay(jobs, days=1, fast_s=f, idle_s=i, name=n, pacing=p, month_budget=m, history=history, nudge=nudge)
                for n, p, f, i, m, _, nudge in (*CONFIGS[1:4], CONFIGS[5])
            ]
            adaptive, progress, monthly, nudged = (Point.of(r.name, r) for r in runs)
            met1 += progress.requests_per_day <= adaptive.requests_per_day and progress.p95_s <= naive.p95_s
            met2 += monthly.requests_per_day <= naive.requests_per_day / 10 and monthly.p95_s <= adaptive.p95_s
            met2_nudged += nudged.requests_per_day <= naive.requests_per_day / 10 and nudged.p95_s <= adaptive.p95_s
            ratios.append(progress.requests_per_day / adaptive.requests_per_day)
            margins.append(progress.p95_s - naive.p95_s)
        rows.append(
            [
                day,
                f"{seeds.start}-{seeds.stop - 1}",
                f"{met1}/{len(seeds)}",
                f"{met2}/{len(seeds)}",
                f"{met2_nudged}/{len(seeds)}",
                fmt(percentile(ratios, 50), 2),
                f"{fmt(min(ratios), 2)}-{fmt(max(ratios), 2)}",
                fmt(percentile(margins, 50), 1),
                f"{fmt(min(margins), 1)} to {fmt(max(margins), 1)}",
            ]
        )
    header = [
        "day",
        "seeds",
        "goal 1 met (progress defaults)",
        "goal 2 met (monthly 10,000)",
        "goal 2 met (idle 3600 s, the application nudges)",
        "progress / adaptive requests, median",
        "range",
        "progress p95 - naive p95, median s",
        "range s",
    ]
    return markdown_table(header, rows)


async def measure(*, seed: int, curve: tuple[float, ...]) -> dict[str, tuple[list[Point], list[tuple[str, float, Point]], Point]]:
    """Simulate both days."""
    return {day: await run_day(day, seed=seed, curve=curve) for day in DAYS}


def main() -> None:
    """Run the simulations, print the tables, draw the curve."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--png", type=Path, default=None, help="draw the curve to this file (needs matplotlib: pip install .[bench])")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--quick", action="store_true", help="three idle intervals instead of six")
    parser.add_argument("--seeds", type=int, default=0, help="also check both goals on seeds 1..N of each day (about 14 s per seed and day)")
    args = parser.parse_args()
    quiet_logs()
    if args.seeds:
        print(asyncio.run(sweep(range(1, args.seeds + 1))), end="\n\n")
    curve = CURVE_IDLE_S[::2] if args.quick else CURVE_IDLE_S
    days = asyncio.run(measure(seed=args.seed, curve=curve))
    text = "\n\n".join(day_markdown(day, *result) for day, result in days.items())
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.png is not None:
        draw(days, args.png)


if __name__ == "__main__":
    main()
