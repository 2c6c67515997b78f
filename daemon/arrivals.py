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
  as ``PRIOR_S`` of observation, so a relay that has just started polls at
  RELAY_IDLE_POLL_INTERVAL and moves from there as it learns. ``REFERENCE_PER_HOUR`` (one
  every three hours) was chosen by measurement on the two simulated days of
  ``bench.pacing_curve`` (docs/performance.md): it is a trade-off, not a law.
- **How long actions take.** ``updated_at - created_at`` of actions the relay saw finish:
  an in-flight action that reports no progress is polled at the fast pace while it is
  younger than most finished actions were (``DURATION_QUANTILE``), since that is when it
  is likely to finish; older ones back off (:mod:`daemon.progress`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from daemon.model import ActionSnapshot, parse_timestamp

WINDOW_S = 86400.0  # a day of arrivals
REFERENCE_PER_HOUR = 1 / 3  # one new action every three hours: the rate at which the idle interval is RELAY_IDLE_POLL_INTERVAL
PRIOR_S = 2 * 3600.0
MAX_IDLE_FACTOR = 2.0
MAX_SAMPLES = 500
MIN_DURATIONS = 5  # fewer finished actions than this teach nothing yet
DURATION_QUANTILE = 0.9


@dataclass(frozen=True, slots=True)
class Seen:
    """What the list showed this cycle: new actions' creation, finished actions' durations (epoch seconds)."""

    created: tuple[float, ...] = ()  # created_at of actions first seen this cycle (not the baseline's)
    durations_s: tuple[float, ...] = ()  # updated_at - created_at of actions seen finishing this cycle


@dataclass(frozen=True, slots=True)
class History:
    """The arrivals and durations the relay remembers (bounded)."""

    since: float | None = None  # relay clock at the first cycle
    created: tuple[float, ...] = ()
    durations_s: tuple[float, ...] = ()


def learn(history: History, seen: Seen, *, now: float) -> History:
    """Return the history after a cycle: arrivals older than the window drop out, both lists stay bounded."""
    created = tuple(t for t in (*history.created, *seen.created) if now - t <= WINDOW_S)[-MAX_SAMPLES:]
    durations = (*history.durations_s, *(d for d in seen.durations_s if d >= 0))[-MAX_SAMPLES:]
    return History(since=now if history.since is None else history.since, created=created, durations_s=durations)


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


def durations_from(pairs: Iterable[tuple[float | None, float | None]]) -> tuple[float, ...]:
    """Return ``updated - created`` for each (created, updated) pair that has both."""
    return tuple(u - c for c, u in pairs if c is not None and u is not None)


def seen_from(*, new: Iterable[ActionSnapshot], finished: Iterable[ActionSnapshot]) -> Seen:
    """Return what a cycle teaches: the creation of actions first seen, the durations of actions seen finishing."""
    created = (_epoch(s.created_at) for s in new)
    pairs = ((_epoch(s.created_at), _epoch(s.updated_at)) for s in finished)
    return Seen(created=tuple(t for t in created if t is not None), durations_s=durations_from(pairs))


def _epoch(text: str | None) -> float | None:
    moment = parse_timestamp(text)
    return moment.timestamp() if moment else None
