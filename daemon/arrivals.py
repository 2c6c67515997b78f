"""PURE: what the relay learns from the actions it sees come and go (progress pacing).

Two things, both read from the list, which carries each action's ``created_at`` and, once
it has finished, the ``updated_at`` of its finish:

- **How often new actions arrive.** A poll cannot see an action that starts and ends
  between two polls, so the idle interval is what costs detection time, and on a quiet
  day it is most of the requests. Waiting costs each missed action about half an idle
  interval, so the interval that minimises requests plus rate-weighted waiting follows
  the square-root law: ``RELAY_IDLE_POLL_INTERVAL x sqrt(REFERENCE_PER_HOUR / rate)``, within
  [RELAY_POLL_INTERVAL, ``MAX_IDLE_FACTOR`` x RELAY_IDLE_POLL_INTERVAL]. The rate counts the
  new actions seen over the last ``WINDOW_S`` plus a prior of ``REFERENCE_PER_HOUR`` weighing
  as ``PRIOR_S`` of observation. ``REFERENCE_PER_HOUR`` (one every two hours) was chosen by
  measurement on the two simulated days of ``bench.pacing_curve`` over 40 seeds each
  (docs/performance.md): it is a trade-off, not a law.
- **How long actions take.** ``updated_at - created_at`` of actions the relay saw finish:
  an in-flight action that reports no progress is polled at the fast pace while it is
  younger than most finished actions were (``DURATION_QUANTILE``), since that is when it
  is likely to finish; older ones back off (:mod:`daemon.progress`).

Where the learning starts: the first poll of a new state database reads the last day of
the list (the baseline), and that day is learned at once, as if watched (``Seen.since``).
After that the history is saved with the project's state (``to_text``/``from_text``) each
time it changes, so a restart or a new leader carries on from it instead of the prior.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from daemon.model import ActionSnapshot, parse_timestamp

WINDOW_S = 86400.0  # a day of arrivals
REFERENCE_PER_HOUR = 0.5  # one new action every two hours: the rate at which the idle interval is RELAY_IDLE_POLL_INTERVAL
PRIOR_S = 2 * 3600.0
MAX_IDLE_FACTOR = 2.0
MAX_SAMPLES = 500
MAX_AHEAD_S = 300.0  # clock skew tolerated in a created_at ahead of the relay's clock
MIN_DURATIONS = 5  # fewer finished actions than this teach nothing yet
DURATION_QUANTILE = 0.9


@dataclass(frozen=True, slots=True)
class Seen:
    """What the list showed this cycle: new actions' creation, finished actions' durations (epoch seconds)."""

    created: tuple[float, ...] = ()  # created_at of actions first seen this cycle (on a baseline: every listed action's)
    durations_s: tuple[float, ...] = ()  # updated_at - created_at of actions seen finishing this cycle (on a baseline: every finished one's)
    since: float | None = None  # a baseline: the start of the window the list was read over (it counts as watched)


@dataclass(frozen=True, slots=True)
class History:
    """The arrivals and durations the relay remembers (bounded)."""

    since: float | None = None  # relay clock at the first cycle
    created: tuple[float, ...] = ()
    durations_s: tuple[float, ...] = ()


def learn(history: History, seen: Seen, *, now: float) -> History:
    """Return the history after a cycle: arrivals older than the window drop out, both lists stay bounded.

    A ``created_at`` further ahead of the relay's clock than ``MAX_AHEAD_S`` is not an arrival
    anyone can trust (a wrong clock, a lying peer): it would count as recent for ever and
    quicken the polling, so it is not learned.
    """
    fresh = (*history.created, *(t for t in seen.created if t - now <= MAX_AHEAD_S))
    created = tuple(sorted(t for t in fresh if now - t <= WINDOW_S))[-MAX_SAMPLES:]
    durations = (*history.durations_s, *(d for d in seen.durations_s if d >= 0))[-MAX_SAMPLES:]
    since = history.since if history.since is not None else (now if seen.since is None else min(seen.since, now))
    return History(since=since, created=created, durations_s=durations)


def rate_per_hour(history: History, *, now: float) -> float:
    """Return new actions an hour: those seen in the window, with the prior, over the time observed plus the prior's."""
    observed_s = min(now - (now if history.since is None else history.since), WINDOW_S)
    arrivals = sum(1 for t in history.created if now - t <= observed_s)
    return (arrivals + REFERENCE_PER_HOUR * PRIOR_S / 3600.0) / ((observed_s + PRIOR_S) / 3600.0)


def idle_interval_s(history: History, *, now: float, idle_s: float, fast_s: float) -> float:
    """Return the idle interval the arrival rate asks for (square-root law, ``idle_s`` at the reference rate)."""
    wanted = idle_s * math.sqrt(REFERENCE_PER_HOUR / rate_per_hour(history, now=now))
    return min(max(wanted, fast_s), idle_s * MAX_IDLE_FACTOR)


def typical_duration_s(history: History) -> float | None:
    """Return the duration most finished actions stayed under (the quantile), or None before enough were seen."""
    if len(history.durations_s) < MIN_DURATIONS:
        return None
    ordered = sorted(history.durations_s)
    return ordered[min(len(ordered) - 1, math.ceil(DURATION_QUANTILE * len(ordered)) - 1)]


def to_text(history: History) -> str:
    """Return the history as stored with the project's state (JSON, rounded to the second)."""
    return json.dumps({"since": history.since, "created": [round(t) for t in history.created], "durations_s": [round(d, 1) for d in history.durations_s]})


def from_text(text: str | None) -> History | None:
    """Return a stored history, or None for nothing stored or anything unreadable (the relay then starts from the prior)."""
    try:
        data = json.loads(text or "")
        since, created, durations = data["since"], data["created"], data["durations_s"]
        if not isinstance(created, list) or not isinstance(durations, list):
            return None
        history = History(
            since=None if since is None else float(since),
            created=tuple(float(t) for t in created)[-MAX_SAMPLES:],
            durations_s=tuple(float(d) for d in durations if float(d) >= 0)[-MAX_SAMPLES:],
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        return None
    finite = [history.since or 0.0, *history.created, *history.durations_s]
    return history if all(math.isfinite(v) for v in finite) else None


def durations_from(pairs: Iterable[tuple[float | None, float | None]]) -> tuple[float, ...]:
    """Return ``updated - created`` for each (created, updated) pair that has both."""
    return tuple(u - c for c, u in pairs if c is not None and u is not None)


def seen_from(*, new: Iterable[ActionSnapshot], finished: Iterable[ActionSnapshot], since: float | None = None) -> Seen:
    """Return what a cycle teaches: the creation of actions first seen, the durations of actions seen finishing.

    ``since``: this was a baseline read over the window from ``since`` to now.
    """
    created = (_epoch(s.created_at) for s in new)
    pairs = ((_epoch(s.created_at), _epoch(s.updated_at)) for s in finished)
    in_window = tuple(t for t in created if t is not None and (since is None or t >= since))
    return Seen(created=in_window, durations_s=durations_from(pairs), since=since)


def _epoch(text: str | None) -> float | None:
    moment = parse_timestamp(text)
    return moment.timestamp() if moment else None
