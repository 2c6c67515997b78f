"""PURE: when will each in-flight action finish, judged from the progress the list showed.

Every poll the list shows each in-flight action's ``progress`` (0-100) and its own
``created_at``/``updated_at``. A ``Track`` per action keeps two samples: the *anchor*
(the last moment the action was seen at its lowest progress: its creation at 0, or an
``updated_at`` that still showed that progress) and the *latest* (its newest
progress and the ``updated_at`` it was reached at). A linear rate between them gives an
estimated finish; no movement, or no usable timestamps, gives none.

``wait_s`` turns the tracks into the wait before the next poll: a third of a fast interval
after the earliest estimated finish, the fast pace for an action that has no estimate yet
and is younger than ``new_s`` (a minute, or the duration most finished actions stayed
under, see :mod:`daemon.arrivals`), and for older ones without an estimate (types that
jump from 0 to 100) a back-off: half the time since ``new_s``, so the waits grow from the
fast pace as the action outlives what was typical; always within [fast, idle].
``past_finishes`` then moves a poll that would land just before an estimated finish to
just after it.

The samples' moments are Voucherify's timestamps, compared with the relay's clock: an
NTP-synchronised host is seconds off at most, and the fast bound absorbs that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from daemon.model import ActionSnapshot, parse_timestamp

BACKOFF_SHARE = 0.5  # an action without an estimate, past the typical duration, is polled again after half the time since
# aim a third of a fast interval after the estimate: a poll just before the finish costs a fast interval more, and
# the estimate is often early by seconds (an action queued at 0% for a while, then moving faster than it looked)
FINISH_MARGIN_SHARE = 1 / 3
DONE = 100.0


@dataclass(frozen=True, slots=True)
class Observed:
    """One in-flight action as the list showed it (epoch seconds; None when missing or unparsable)."""

    id: str
    progress: int | None
    created_at: float | None
    updated_at: float | None


def observed_from(s: ActionSnapshot) -> Observed:
    """Return what pacing reads of a listed in-flight action."""
    created, updated = parse_timestamp(s.created_at), parse_timestamp(s.updated_at)
    return Observed(
        id=s.id,
        progress=s.progress,
        created_at=created.timestamp() if created else None,
        updated_at=updated.timestamp() if updated else None,
    )


@dataclass(frozen=True, slots=True)
class Track:
    """What the relay remembers of one in-flight action's progress."""

    first_seen_at: float  # relay clock
    anchor_at: float
    anchor_progress: float
    latest_at: float
    latest_progress: float

    def finish_at(self) -> float | None:
        """Return the estimated finish (linear from anchor to latest), or None without movement."""
        moved = self.latest_progress - self.anchor_progress
        span_s = self.latest_at - self.anchor_at
        if moved <= 0 or span_s <= 0:
            return None
        return self.latest_at + (DONE - self.latest_progress) * span_s / moved


def observe(tracks: Mapping[str, Track], seen: Iterable[Observed], *, now: float) -> dict[str, Track]:
    """Return the tracks after a poll that showed ``seen`` in flight (actions no longer in flight are dropped)."""
    return {o.id: _advance(tracks.get(o.id), o, now=now) for o in seen}


def _advance(track: Track | None, seen: Observed, *, now: float) -> Track:
    progress = float(min(max(seen.progress or 0, 0), 100))
    at = seen.updated_at if seen.updated_at is not None else now
    if track is None:
        anchor_at, anchor_progress = (at, progress) if progress == 0 or seen.created_at is None else (seen.created_at, 0.0)
        return Track(first_seen_at=now, anchor_at=anchor_at, anchor_progress=anchor_progress, latest_at=at, latest_progress=progress)
    if progress <= track.anchor_progress:  # still at (or back to) its lowest: movement starts after ``at``
        return replace(track, anchor_at=at, anchor_progress=progress, latest_at=at, latest_progress=progress)
    if progress == track.latest_progress:
        return track
    return replace(track, latest_at=at, latest_progress=progress)


def action_wait_s(track: Track, *, now: float, fast_s: float, idle_s: float, new_s: float, follow_s: float | None = None) -> float:
    """Return how long this action lets the relay wait, within [fast_s, idle_s] (``new_s``: followed while younger).

    ``follow_s``: the pace for an action without an estimate while it is young (default: the fast pace).
    """
    finish = track.finish_at()
    if finish is not None:
        return min(max(finish - now + fast_s * FINISH_MARGIN_SHARE, fast_s), idle_s)
    past_new_s = now - track.first_seen_at - new_s  # negative while young: the follow pace
    return min(max(past_new_s * BACKOFF_SHARE, follow_s or fast_s), idle_s)


def past_finishes(interval_s: float, tracks: Mapping[str, Track], *, now: float, fast_s: float) -> float:
    """Return ``interval_s``, moved to just after an estimated finish that falls less than a fast interval after it.

    A poll just before an action finishes finds it running, and the next one may only come
    a fast interval later: that action's news would wait most of a fast interval. Moving
    the poll to just after the estimate costs the poll's other purpose (finding new
    actions) those few seconds instead. Not while an action without an estimate is in
    flight: it is followed at its own pace, and a later poll would cost it.
    """
    finishes = [t.finish_at() for t in tracks.values()]
    if not finishes or None in finishes:
        return interval_s
    first = min(f for f in finishes if f is not None) - now
    if interval_s < first < interval_s + fast_s * (1 - FINISH_MARGIN_SHARE):
        return first + fast_s * FINISH_MARGIN_SHARE
    return interval_s


def wait_s(tracks: Mapping[str, Track], *, now: float, fast_s: float, idle_s: float, new_s: float, follow_s: float | None = None) -> float | None:
    """Return the wait the in-flight actions ask for (the shortest), or None when nothing is in flight."""
    waits = [action_wait_s(t, now=now, fast_s=fast_s, idle_s=idle_s, new_s=new_s, follow_s=follow_s) for t in tracks.values()]
    return min(waits, default=None)
