"""API calls: a simulated day of imports, the relay's real Poller against a naive poller.

Time is simulated: the stand-in and the Poller share a fake clock that jumps from one
poll to the next, so a day takes seconds. The relay side is the real ``Poller``
(list -> detect -> GET -> SQLite commit) over real HTTP to the stand-in, paced the way
``Relay._pace`` paces it (``daemon.cadence.next_poll``: fast while anything is in flight
or changed within the idle interval, idle otherwise). The naive poller lists every 30 s
and GETs every in-flight action each cycle (the obvious way to learn an action's
progress and result). Both see the same seeded workload: ``--imports`` actions a day,
each lasting 2-10 minutes, with progress updates every minute, on top of a project
holding a few hundred finished actions from earlier days.

    python -m bench.api_calls [--imports 20] [--days 1] [--seed 6]
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import heapq
import math
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import APP_ID, APP_TOKEN, Section, base_parser, env_int, finish, fmt, markdown_table, mean, percentile, quiet_logs
from daemon.cadence import HOURS_PER_MONTH, Cadence
from daemon.demo.standin import VoucherifyStandIn
from daemon.model import TERMINAL_STATUSES, Event, EventType
from daemon.monthly import Cycle, idle_interval_s
from daemon.pacing import Pacing, started, succeeded, woken
from daemon.poll_loop import cycle_facts
from daemon.poller import Poller
from daemon.settings import PROGRESS_POLL_INTERVAL_S
from daemon.store.sqlite import open_sqlite
from daemon.voucherify import VoucherifyClient

T0 = datetime(2025, 1, 6, tzinfo=UTC).timestamp()
DAY_S = 86400.0
NAIVE_INTERVAL_S = 30.0
HISTORY_DAYS = 3  # the project's previous days, drawn like the simulated one: what the first poll's baseline reads
TYPES = ("CUSTOMERS.IMPORT_CSV", "VOUCHERS.IMPORT_CSV", "PRODUCTS.IMPORT_CSV", "VOUCHERS.BULK_UPDATE", "SKUS.IMPORT_CSV")
FINISHED_EVENTS = (EventType.COMPLETED, EventType.FAILED)
MONTH_FACTOR = HOURS_PER_MONTH / 24.0  # days in an average month, as daemon.cadence counts them


class SimClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float) -> None:
        self.t = start

    def time(self) -> float:
        """Return the simulated epoch seconds."""
        return self.t

    def now(self) -> datetime:
        """Return the simulated moment as an aware datetime (the stand-in's clock)."""
        return datetime.fromtimestamp(self.t, tz=UTC)


@dataclass(frozen=True, slots=True)
class ImportJob:
    """One simulated import: when it starts, how long it runs, how it ends."""

    key: int
    type: str
    start: float
    duration_s: float
    fails: bool
    jumps: bool = False  # its progress stays 0 until it finishes (a type that reports none)

    @property
    def end(self) -> float:
        """Return when it finishes."""
        return self.start + self.duration_s


def plan_workload(*, imports_per_day: int, days: int, seed: int) -> list[ImportJob]:
    """Draw the imports: uniform start times over each day, 2-10 minutes each, some failing."""
    rng = random.Random(seed)
    jobs: list[ImportJob] = []
    for day in range(days):
        for _ in range(imports_per_day):
            start = T0 + day * DAY_S + rng.uniform(60.0, DAY_S - 900.0)
            jobs.append(ImportJob(len(jobs), rng.choice(TYPES), start, rng.uniform(120.0, 600.0), rng.random() < 0.15))
    return sorted(jobs, key=lambda j: j.start)


def plan_busy_workload(*, imports_per_day: int, days: int, seed: int) -> list[ImportJob]:
    """Draw a busier day: a quarter of the imports under a minute, the rest 1-15 minutes, a fifth without progress."""
    rng = random.Random(seed)
    jobs: list[ImportJob] = []
    for day in range(days):
        for _ in range(imports_per_day):
            start = T0 + day * DAY_S + rng.uniform(60.0, DAY_S - 1200.0)
            duration = rng.uniform(15.0, 60.0) if rng.random() < 0.25 else rng.uniform(60.0, 900.0)
            jobs.append(ImportJob(len(jobs), rng.choice(TYPES), start, duration, rng.random() < 0.15, jumps=rng.random() < 0.2))
    return sorted(jobs, key=lambda j: j.start)


class Scenario:
    """Plays the workload into a stand-in as the simulated clock passes each step."""

    def __init__(self, standin: VoucherifyStandIn, clock: SimClock, jobs: list[ImportJob]) -> None:
        self._standin, self._clock = standin, clock
        self._ids: dict[int, str] = {}
        self.finished_at: dict[str, float] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        for job in jobs:
            self._at(job.start, functools.partial(self._create, job))
            self._at(job.start + 5.0, functools.partial(self._update, job, 0))
            for minute in range(1, 0 if job.jumps else int(job.duration_s // 60) + 1):
                progress = min(99, int(100 * minute * 60 / job.duration_s))
                self._at(job.start + minute * 60.0, functools.partial(self._update, job, progress))
            self._at(job.end, functools.partial(self._finish, job))

    def _at(self, moment: float, step: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (moment, len(self._queue), step))

    def advance_to(self, moment: float) -> None:
        """Apply every scripted change up to ``moment``, each at its own time."""
        while self._queue and self._queue[0][0] <= moment:
            when, _, step = heapq.heappop(self._queue)
            self._clock.t = when
            step()
        self._clock.t = moment

    def _create(self, job: ImportJob) -> None:
        self._ids[job.key] = self._standin.add_action(job.type)

    def _update(self, job: ImportJob, progress: int) -> None:
        self._standin.update_action(self._ids[job.key], status="IN_PROGRESS", progress=progress)

    def _finish(self, job: ImportJob) -> None:
        action_id = self._ids[job.key]
        if job.fails:
            self._standin.complete_action(action_id, status="FAILED", result={"message": "Import failed: bad header row."})
        else:
            self._standin.complete_action(action_id, example="CUSTOMERS.IMPORT_CSV")
        self.finished_at[action_id] = self._clock.t


def prior_days(planner: Callable[..., list[ImportJob]], *, imports_per_day: int, seed: int, days: int = HISTORY_DAYS) -> list[ImportJob]:
    """Draw the project's previous ``days`` the way ``planner`` draws the simulated one (its own seed): the history it holds."""
    jobs = planner(imports_per_day=imports_per_day, days=days, seed=seed + 1000)
    return [replace(j, start=j.start - days * DAY_S) for j in jobs if j.end - days * DAY_S <= T0]


def seed_history(standin: VoucherifyStandIn, history: list[ImportJob]) -> None:
    """Give the project its finished actions from earlier days, each created at its start and last updated at its finish."""
    for job in history:
        created = datetime.fromtimestamp(job.start, tz=UTC)
        action_id = standin.add_action(job.type, status="FAILED" if job.fails else "DONE", progress=100, created_at=created)
        standin.update_action(action_id, updated_at=datetime.fromtimestamp(job.end, tz=UTC))


@dataclass
class SimResult:
    """What one simulated poller spent and how quickly it noticed completions."""

    name: str
    lists: int = 0
    gets: int = 0
    cycles: int = 0
    steady_cycles: int = 0
    steady_calls: int = 0
    fast_cycles: int = 0
    tail_cycles: int = 0  # fast polls with nothing in flight and nothing changed (the stay-fast window)
    finished: int = 0
    detected: dict[str, float] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Return all requests sent."""
        return self.lists + self.gets


async def simulate_relay(
    jobs: list[ImportJob],
    *,
    days: int,
    fast_s: float,
    idle_s: float,
    name: str,
    pacing: str = "adaptive",
    month_budget: int | None = None,
    history: list[ImportJob] | None = None,
    nudge: bool = False,
) -> SimResult:
    """Run the real Poller through the simulated days, paced by ``daemon.pacing.succeeded`` as Relay._pace paces it.

    ``nudge``: the customer's application calls ``POST /watch`` as it starts each import (``daemon.pacing.woken``, as the relay does).
    """
    clock = SimClock(T0)
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN, clock=clock.now)
    seed_history(standin, history or [])
    url = await standin.start()
    scenario = Scenario(standin, clock, jobs)
    result = SimResult(name)
    detected: dict[str, float] = {}

    def route(event: Event) -> list[str]:
        if event.type in FINISHED_EVENTS:  # a started event is not the news being timed
            detected.setdefault(str(event.data.get("id")), clock.t)
        return ["webhook"]

    cycle = Cycle(start=T0, end=T0 + MONTH_FACTOR * DAY_S)  # the simulated days open a billing cycle
    starts = [j.start for j in jobs]  # sorted
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        store = open_sqlite(Path(tmp) / "state.db")
        async with aiohttp.ClientSession() as session:
            client = VoucherifyClient(session, base_url=url, app_id=APP_ID, app_token=APP_TOKEN)
            poller = Poller(client=client, store=store.actions, route=route, clock=clock.time)
            cadence = Cadence.of(pacing=pacing, fast_s=fast_s, idle_s=idle_s)
            end, moment, state = T0 + days * DAY_S, T0, Pacing(interval_s=fast_s, last_activity_at=-math.inf)
            for _ in range(int(days * DAY_S / min(fast_s, idle_s)) + 10):  # bounded: one poll per fast interval at most
                if moment >= end:
                    break
                scenario.advance_to(moment)
                state = started(state, now=moment)
                report = await poller.poll_once()
                result.cycles += 1
                if not report.first_run and not report.transitions and not report.events:
                    result.steady_cycles += 1
                    result.steady_calls += report.api_calls
                month_idle = None
                if month_budget is not None:
                    used = standin.count("list") + standin.count("get")
                    month_idle = idle_interval_s(budget=month_budget, used=used, now=moment, cycle=cycle, fast_s=fast_s)
                state, decision = succeeded(state, cycle_facts(report, client, idle_s=month_idle), cadence=cadence, now=moment)
                result.fast_cycles += decision.reason == "busy"
                result.tail_cycles += decision.reason == "busy" and not report.in_flight and not report.transitions and fast_s < idle_s
                later = moment + decision.interval_s
                upcoming = bisect.bisect_right(starts, moment)
                if nudge and upcoming < len(starts) and starts[upcoming] < later:
                    state, wake_at = woken(state, cadence=cadence, now=starts[upcoming])
                    later = min(later, wake_at)
                moment = later
        await store.close()
    await standin.close()
    return _tally(result, standin, scenario, detected)


async def simulate_naive(jobs: list[ImportJob], *, days: int, interval_s: float = NAIVE_INTERVAL_S, history: list[ImportJob] | None = None) -> SimResult:
    """List every ``interval_s`` and GET every in-flight action each cycle."""
    clock = SimClock(T0)
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN, clock=clock.now)
    seed_history(standin, history or [])
    url = await standin.start()
    scenario = Scenario(standin, clock, jobs)
    headers = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
    tracked: set[str] = set()
    seen: set[str] = set()
    detected: dict[str, float] = {}
    async with aiohttp.ClientSession(base_url=url, headers=headers) as session:
        for cycle in range(int(days * DAY_S / interval_s) + 1):
            moment = T0 + cycle * interval_s
            scenario.advance_to(moment)
            async with session.get("/v1/async-actions", params={"limit": "100"}) as response:
                listed = (await response.json())["async_actions"]
            for action in listed:
                new = action["id"] not in seen
                seen.add(action["id"])
                if action["status"] not in TERMINAL_STATUSES or (new and cycle > 0):
                    tracked.add(action["id"])  # in flight, or finished since the last look: GET it for its result
            for action_id in sorted(tracked):
                async with session.get(f"/v1/async-actions/{action_id}") as response:
                    detail = await response.json()
                if detail["status"] in TERMINAL_STATUSES:
                    tracked.discard(action_id)
                    detected.setdefault(action_id, moment)
    await standin.close()
    return _tally(SimResult("naive: list every 30 s + GET each in-flight action"), standin, scenario, detected)


def _tally(result: SimResult, standin: VoucherifyStandIn, scenario: Scenario, detected: dict[str, float]) -> SimResult:
    result.lists, result.gets = standin.count("list"), standin.count("get")
    result.finished = len(scenario.finished_at)
    result.detected = detected
    result.latencies_s = [detected[i] - at for i, at in scenario.finished_at.items() if i in detected]
    return result


def build_section(results: list[SimResult], *, imports: int, days: int, seed: int) -> Section:
    """Turn the simulations into tables."""
    naive = next(r for r in results if r.name.startswith("naive"))
    rows, summary = [], []
    for r in results:
        per_day = r.total / days
        rows.append(
            [
                r.name,
                fmt(r.lists / days, 0),
                fmt(r.gets / days, 0),
                fmt(per_day, 0),
                fmt(per_day * MONTH_FACTOR, 0),
                f"{per_day / (naive.total / days):.0%}",
                fmt(r.steady_calls / r.steady_cycles, 3) if r.steady_cycles else "n/a",
                fmt(r.gets / r.finished, 2) if r.finished else "n/a",
                f"{len(r.latencies_s)}/{r.finished}",
                fmt(mean(r.latencies_s), 0),
                fmt(percentile(r.latencies_s, 95), 0),
                fmt(max(r.latencies_s, default=math.nan), 0),
                fmt(r.tail_cycles / days, 0) if r.name.startswith("relay, adaptive") else "-",
            ]
        )
    header = [
        "poller",
        "lists/day",
        "GETs/day",
        "requests/day",
        "requests/month",
        "vs naive",
        "calls per steady cycle",
        "GETs per finished action",
        "detected",
        "mean detect s",
        "p95 detect s",
        "max detect s",
        "fast polls with nothing in flight",
    ]
    relay = results[0]
    steady = relay.steady_calls / relay.steady_cycles if relay.steady_cycles else math.nan
    gets_per = relay.gets / relay.finished if relay.finished else math.nan
    summary.append(["API calls per steady poll cycle", fmt(steady, 3), "1.0", _verdict(steady <= 1.0)])
    summary.append(["GETs per finished action", fmt(gets_per, 2), "1.0", _verdict(gets_per <= 1.0)])
    summary.extend([f"requests/day, {r.name}", f"{fmt(r.total / days, 0)} ({fmt(r.total / days * MONTH_FACTOR, 0)}/month)", "", ""] for r in results)
    markdown = "\n\n".join(
        [
            (
                f"{imports} imports a day over {days} simulated day(s) (seed {seed}), each running 2-10 minutes with a progress "
                f"update every minute, 15% failing, in a project whose {HISTORY_DAYS} previous days looked the same (the history it holds). "
                "The relay rows run the real `Poller` against the stand-in on a simulated clock, paced by `daemon.pacing.succeeded` "
                "as the relay's poll loop paces it (progress: near each estimated finish, otherwise an idle interval learned from the arrival rate; "
                "adaptive: fast while anything is in flight or changed within the cooldown). "
                f"Per month = per day x {MONTH_FACTOR:.2f}. Detection times are simulated seconds from the action finishing "
                "to the poll that emitted its event. "
                '"Fast polls with nothing in flight" (per day, adaptive) are the polls it makes at the fast pace after the last activity, '
                "because it stays fast until the idle interval has passed since anything was in flight or changed. "
                "Every strategy, both days, over many drawings: `bench/pacing_curve.py` (the next section)."
            ),
            markdown_table(header, rows),
        ]
    )
    return Section(
        name="api_calls",
        title="API calls (simulated day)",
        summary=summary,
        markdown=markdown,
        raw={r.name: {k: v for k, v in vars(r).items() if k not in {"detected", "latencies_s"}} for r in results},
    )


def _verdict(ok: bool) -> str:  # noqa: FBT001
    return "meets" if ok else "MISSES"


async def measure(*, imports: int, days: int, seed: int) -> Section:
    """Simulate the relay (adaptive pacing at its defaults, and at the naive poller's pace) and the naive poller."""
    jobs = plan_workload(imports_per_day=imports, days=days, seed=seed)
    history = prior_days(plan_workload, imports_per_day=imports, seed=seed)
    results = [
        await simulate_relay(
            jobs, days=days, fast_s=PROGRESS_POLL_INTERVAL_S, idle_s=300.0, name="relay, defaults: progress (26 s / 300 s)", pacing="progress", history=history
        ),
        await simulate_relay(jobs, days=days, fast_s=30.0, idle_s=300.0, name="relay, adaptive (30 s busy / 300 s idle)", history=history),
        await simulate_relay(jobs, days=days, fast_s=30.0, idle_s=30.0, name="relay, 30 s always (naive's pace)", history=history),
        await simulate_naive(jobs, days=days, history=history),
    ]
    return build_section(results, imports=imports, days=days, seed=seed)


def main() -> None:
    """Run the simulation and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=env_int("BENCH_IMPORTS_PER_DAY", 20), help="imports a day (env BENCH_IMPORTS_PER_DAY)")
    parser.add_argument("--days", type=int, default=env_int("BENCH_DAYS", 1), help="simulated days (env BENCH_DAYS)")
    parser.add_argument("--seed", type=int, default=env_int("BENCH_SEED", 6))
    args = parser.parse_args()
    quiet_logs()
    section = asyncio.run(measure(imports=args.imports, days=args.days, seed=args.seed))
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
