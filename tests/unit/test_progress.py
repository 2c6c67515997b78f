"""Progress-aware pacing: finish estimates from listed progress, and the wait they ask for (pure)."""

from __future__ import annotations

import pytest

from daemon.cadence import Cadence
from daemon.pacing import CycleFacts, Pacing, succeeded
from daemon.progress import Observed, Track, action_wait_s, observe, past_finishes, wait_s

T = 1_000_000.0  # the relay's clock at the first sighting


def seen(progress: int | None, *, created: float | None = T - 60, updated: float | None = T) -> Observed:
    """Return one listing of action ``a``."""
    return Observed(id="a", progress=progress, created_at=created, updated_at=updated)


def track_after(*listings: tuple[float, Observed]) -> Track:
    """Return the track of ``a`` after the given (relay time, listing) polls."""
    tracks: dict[str, Track] = {}
    for now, listing in listings:
        tracks = observe(tracks, [listing], now=now)
    return tracks["a"]


@pytest.mark.parametrize(
    ("listings", "finish"),
    [
        # created a minute ago, 25% now: linear from creation, 4 minutes in all
        ([(T, seen(25))], T - 60 + 240),
        # two sightings: the rate between the anchor (creation at 0) and the newest one
        ([(T, seen(25)), (T + 60, seen(50, updated=T + 60))], T - 60 + 240),
        # queued at 0 until T (its updated_at says so): movement starts from there
        ([(T, seen(0)), (T + 30, seen(10, updated=T + 30))], T + 300),
        # no movement yet, or no usable timestamps: unknown
        ([(T, seen(0))], None),
        ([(T, seen(None))], None),
        ([(T, seen(0)), (T + 60, seen(0, updated=T + 60))], None),
        # no created_at: the first sighting anchors nothing, the next one gives the rate
        ([(T, seen(20, created=None))], None),
        ([(T, seen(20, created=None)), (T + 30, seen(30, updated=T + 30, created=None))], T + 30 + 70 * 3),
        # a listing showing the same progress changes nothing
        ([(T, seen(50)), (T + 30, seen(50))], T - 60 + 120),
        # 100% but not terminal yet: due now
        ([(T, seen(100))], T),
    ],
)
def test_finish_estimate(listings, finish):
    """The estimated finish is linear from the last moment at the lowest progress to the newest progress; no movement gives none."""
    assert track_after(*listings).finish_at() == (None if finish is None else pytest.approx(finish))


@pytest.mark.parametrize(
    ("listings", "now", "wait"),
    [
        ([(T, seen(25))], T, 190),  # estimate 3 minutes away: aimed a third of a fast interval (10 s) after it
        ([(T, seen(90))], T, 30),  # estimate 6.7 s away: never under the fast pace
        ([(T, seen(1, created=T - 600))], T, 300),  # hours away: the idle pace at most
        ([(T, seen(50))], T + 200, 30),  # overdue: the fast pace
        ([(T, seen(0))], T + 30, 30),  # no estimate, seen for under a minute: fast
        ([(T, seen(0))], T + 90, 30),  # no estimate, past its first minute: half the time since, never under the fast pace
        ([(T, seen(0))], T + 180, 60),  # ...two minutes past it: a minute
        ([(T, seen(0))], T + 400, 170),
        ([(T, seen(0))], T + 3600, 300),  # ...up to the idle pace
    ],
)
def test_action_wait(listings, now, wait):
    """An action asks for a poll after its estimated finish, the fast pace while new or overdue, then half the time since it stopped being new."""
    track = track_after(*listings)
    assert action_wait_s(track, now=now, fast_s=30, idle_s=300, new_s=60) == pytest.approx(wait)


def test_the_earliest_action_wins_and_finished_ones_are_forgotten():
    """The wait is the shortest any in-flight action asks for; an action no longer listed in flight leaves the tracks."""
    slow = Observed(id="slow", progress=10, created_at=T - 60, updated_at=T)
    quick = Observed(id="quick", progress=80, created_at=T - 400, updated_at=T)
    tracks = observe({}, [slow, quick], now=T)
    assert wait_s(tracks, now=T, fast_s=30, idle_s=300, new_s=60) == pytest.approx(110)
    assert set(observe(tracks, [slow], now=T + 100)) == {"slow"}
    assert wait_s({}, now=T, fast_s=30, idle_s=300, new_s=60) is None


def estimating(*finishes_in_s: float | None) -> dict[str, Track]:
    """Return tracks whose estimated finishes are these many seconds after T (None: an action without an estimate)."""
    tracks = {}
    for i, due in enumerate(finishes_in_s):
        if due is None:
            tracks[f"a{i}"] = track_after((T, seen(0)))
        else:  # 50% after 60 s: as long again to go
            tracks[f"a{i}"] = track_after((T, seen(50, created=T + due - 120, updated=T + due - 60)))
    return tracks


@pytest.mark.parametrize(
    ("interval", "finishes", "moved"),
    [
        (60, (70,), 80),  # a poll 10 s before a finish would see it running: moved to 10 s after it
        (60, (62,), 72),  # ...as close as 2 s after the planned poll
        (60, (79,), 89),  # up to a fast interval after the planned poll, less the margin
        (60, (81,), 60),  # further off: the poll a fast interval later is as close
        (60, (55,), 60),  # the planned poll already comes after it
        (60, (70, 75), 80),  # the earliest estimate decides
        (60, (70, None), 60),  # an action without an estimate needs the planned poll: kept
        (60, (), 60),
    ],
)
def test_a_poll_just_before_an_estimated_finish_waits_for_it(interval, finishes, moved):
    """A poll due less than a fast interval before an estimated finish moves to just after it (aimed a third of a fast interval past it)."""
    assert past_finishes(interval, estimating(*finishes), now=T, fast_s=30) == pytest.approx(moved)


@pytest.mark.parametrize(
    ("pacing", "facts", "expected"),
    [
        ("progress", CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),)), (190, "progress")),
        ("progress", CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(90),)), (30, "busy")),
        ("progress", CycleFacts(in_flight=0, transitions=1, first_run=False), (300, "idle")),
        ("progress", CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),), remaining=1, limit=100), (300, "rate_limit")),
        ("progress", CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),), backlog_owed=True), (30, "busy")),
        ("progress", CycleFacts(in_flight=0, transitions=0, first_run=False, idle_s=1000), (1000, "idle")),
        ("adaptive", CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),)), (30, "busy")),
        ("adaptive", CycleFacts(in_flight=0, transitions=0, first_run=False, idle_s=1000), (1000, "idle")),
        ("fixed", CycleFacts(in_flight=0, transitions=0, first_run=False), (30, "idle")),
        ("fixed", CycleFacts(in_flight=1, transitions=0, first_run=False, idle_s=90), (90, "busy")),
        ("fixed", CycleFacts(in_flight=1, transitions=0, first_run=False, idle_s=10), (30, "busy")),
    ],
)
def test_strategies(pacing, facts, expected):
    """RELAY_PACING picks the wait: progress polls near the estimate, adaptive fast while busy, fixed at one pace; a monthly idle interval applies to each."""
    cadence = Cadence.of(pacing=pacing, fast_s=30, idle_s=300)
    state, decision = succeeded(Pacing(interval_s=30), facts, cadence=cadence, now=T)
    assert (decision.interval_s, decision.reason) == pytest.approx(expected)
    assert (state.interval_s, state.reason) == (decision.interval_s, decision.reason)


def test_hourly_budget_still_binds_progress_pacing():
    """Progress pacing never polls faster than RELAY_API_BUDGET_PER_HOUR spreads the polls."""
    cadence = Cadence.of(pacing="progress", fast_s=30, idle_s=300, budget_per_hour=20)
    facts = CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(90),))
    _, decision = succeeded(Pacing(interval_s=30), facts, cadence=cadence, now=T)
    assert (decision.interval_s, decision.reason) == (225, "budget")


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),)), 190),  # the estimate: 190 s
        (CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),), live_s=60), 60),  # a live bar: every minute
        (CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),), live_s=10), 30),  # never under the fast pace
        (CycleFacts(in_flight=0, transitions=0, first_run=False, live_s=60), 300),  # nothing in flight: the idle pace
        (CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(seen(25),), live_s=60, remaining=1, limit=100), 300),  # the rate limit wins
    ],
)
def test_a_live_progress_interval_bounds_the_wait_while_in_flight(facts, expected):
    """RELAY_LIVE_PROGRESS_INTERVAL (passed only when a sink shows live progress) caps progress pacing's wait while anything runs."""
    cadence = Cadence.of(pacing="progress", fast_s=30, idle_s=300)
    assert succeeded(Pacing(interval_s=30), facts, cadence=cadence, now=T)[1].interval_s == pytest.approx(expected)
