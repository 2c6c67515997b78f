"""PURE: what the poll scheduler remembers between cycles, and how each outcome moves it.

``cadence.next_poll`` decides one interval; this module keeps the state around it: when
the last poll ran, when activity was last seen, how many times the keys were refused in
a row, and until when polling is paused (a 401/403 back-off, a 429's Retry-After, the
spent hourly budget). The relay holds one ``Pacing`` value and replaces it after every
cycle, wake-up or failure; tests read it as a public value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from daemon.arrivals import History, Seen, idle_interval_s, learn, typical_duration_s
from daemon.cadence import Cadence, Decision, is_busy, last_activity, next_poll
from daemon.progress import Observed, Track, observe, past_finishes, wait_s

AUTH_BACKOFF_S = (60.0, 900.0)  # first pause after a 401/403, and its ceiling: doubles per refusal


@dataclass(frozen=True, slots=True)
class Pacing:
    """The poll scheduler's memory."""

    interval_s: float
    reason: str = "busy"  # busy | idle | budget | rate_limit (see cadence.Decision)
    resume_at: float = 0.0  # no poll starts before this
    auth_failures: int = 0  # 401/403 answers in a row
    last_activity_at: float = 0.0
    last_poll_at: float = 0.0
    tracks: Mapping[str, Track] = field(default_factory=dict)  # progress pacing: the in-flight actions' progress
    history: History = field(default_factory=History)  # progress pacing: arrivals and durations seen

    def may_poll(self, now: float) -> bool:
        """Whether a poll may start now (no back-off or Retry-After pending)."""
        return now >= self.resume_at


@dataclass(frozen=True, slots=True)
class CycleFacts:
    """What pacing needs to know about a finished cycle and the API's last answer."""

    in_flight: int
    transitions: int
    first_run: bool
    remaining: int | None = None  # X-Rate-Limit-Remaining
    limit: int | None = None  # X-Rate-Limit-Limit
    observed: tuple[Observed, ...] = ()  # the in-flight actions as the list showed them
    backlog_owed: bool = False  # a capped cycle left list pages to read
    idle_s: float | None = None  # the idle interval a monthly budget chose for now
    seen: Seen = field(default_factory=Seen)  # new actions' creation and finished actions' durations, this cycle
    live_s: float | None = None  # RELAY_LIVE_PROGRESS_INTERVAL, when a sink shows live progress: poll at least this often while in flight


def started(pacing: Pacing, *, now: float) -> Pacing:
    """Note that a poll starts now (wake-ups coalesce against it)."""
    return replace(pacing, last_poll_at=now)


def succeeded(pacing: Pacing, facts: CycleFacts, *, cadence: Cadence, now: float) -> tuple[Pacing, Decision]:
    """Return the state after a successful cycle and the wait before the next one."""
    if cadence.pacing == "progress":
        return _progress_paced(pacing, facts, cadence=cadence, now=now)
    cadence = cadence.with_idle(facts.idle_s)
    active_at = last_activity(pacing.last_activity_at, now=now, in_flight=facts.in_flight, transitions=facts.transitions, first_run=facts.first_run)
    busy = is_busy(cadence, now=now, last_activity_at=active_at)
    decision = next_poll(cadence, busy=busy, remaining=facts.remaining, limit=facts.limit)
    return replace(pacing, interval_s=decision.interval_s, reason=decision.reason, auth_failures=0, last_activity_at=active_at), decision


def _progress_paced(pacing: Pacing, facts: CycleFacts, *, cadence: Cadence, now: float) -> tuple[Pacing, Decision]:
    """Poll just after the earliest estimated finish, idle as the arrival rate asks (never under a monthly budget's interval).

    Actions without an estimate are followed at the fast pace, times as much as a monthly
    budget lengthens the idle interval: a budget that only stretched the idle polls would
    spend itself following them. Only a wake-up or an owed list backlog brings the plain
    fast pace.
    """
    history = learn(pacing.history, facts.seen, now=now)
    idle = idle_interval_s(history, now=now, idle_s=cadence.idle_s, fast_s=cadence.fast_s)
    binds = max(1.0, (facts.idle_s or 0.0) / idle)  # a monthly budget's idle interval over the rate's: how much it binds
    cadence = cadence.with_idle(max(idle, facts.idle_s or 0.0))
    tracks = observe(pacing.tracks, facts.observed, now=now)
    busy = facts.backlog_owed or is_busy(cadence, now=now, last_activity_at=pacing.last_activity_at)
    new_s = max(cadence.cooldown_s, typical_duration_s(history) or 0.0)
    follow_s = min(cadence.fast_s * binds, cadence.idle_s)  # a binding budget slows the following of silent actions as much
    wanted = wait_s(tracks, now=now, fast_s=cadence.fast_s, idle_s=cadence.idle_s, new_s=new_s, follow_s=follow_s)
    if wanted is not None and facts.live_s is not None:
        wanted = min(wanted, facts.live_s)  # a live message's bar fills between estimates (each poll one list request)
    decision = next_poll(cadence, busy=busy, remaining=facts.remaining, limit=facts.limit, wanted_s=wanted)
    decision = replace(decision, interval_s=past_finishes(decision.interval_s, tracks, now=now, fast_s=cadence.fast_s))
    return replace(pacing, interval_s=decision.interval_s, reason=decision.reason, auth_failures=0, tracks=tracks, history=history), decision


def auth_refused(pacing: Pacing, *, now: float, backoff_s: tuple[float, float] = AUTH_BACKOFF_S) -> Pacing:
    """Return the state after a 401/403: pause, doubling from ``backoff_s[0]`` up to ``backoff_s[1]``."""
    failures = pacing.auth_failures + 1
    pause_s = min(backoff_s[1], backoff_s[0] * 2 ** (failures - 1))
    return replace(pacing, auth_failures=failures, resume_at=now + pause_s)


def deferred(pacing: Pacing, *, retry_at: float) -> Pacing:
    """Return the state after a 429 or a spent budget: no poll before ``retry_at``."""
    return replace(pacing, resume_at=max(pacing.resume_at, retry_at))


def woken(pacing: Pacing, *, cadence: Cadence, now: float) -> tuple[Pacing, float]:
    """Return the state after a wake-up (``POST /watch``) and the earliest moment the next poll may run.

    Wakes coalesce: no sooner than one fast interval (or the budget's floor, if longer)
    after the last poll started, so a burst of wake-ups costs at most one extra poll.
    """
    floor_s = max(cadence.fast_s, cadence.budget_floor_s)
    return replace(pacing, last_activity_at=now), max(now, pacing.last_poll_at + floor_s)
