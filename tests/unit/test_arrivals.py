"""What progress pacing learns from arrivals and finishes: the rate, the idle interval, typical durations (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from daemon.arrivals import (
    MAX_SAMPLES,
    REFERENCE_PER_HOUR,
    WINDOW_S,
    History,
    Seen,
    durations_from,
    from_text,
    idle_interval_s,
    learn,
    rate_per_hour,
    to_text,
    typical_duration_s,
)
from daemon.cadence import Cadence
from daemon.pacing import CycleFacts, Pacing, succeeded
from daemon.progress import Observed

T = 1_000_000.0
H = 3600.0
PRIOR = REFERENCE_PER_HOUR * 2  # the prior's arrivals: two hours at the reference rate


def started_at(since: float, *created: float) -> History:
    """Return a history begun at ``since`` holding these arrivals."""
    return History(since=since, created=created)


@pytest.mark.parametrize(
    ("history", "now", "rate"),
    [
        (History(), T, REFERENCE_PER_HOUR),  # nothing seen yet: the prior
        (started_at(T), T, REFERENCE_PER_HOUR),
        (started_at(T - 22 * H), T, PRIOR / 24),  # a day without arrivals: the prior spread over it
        (started_at(T - 22 * H, *(T - i * 600 for i in range(24))), T, (24 + PRIOR) / 24),  # six an hour for four hours
        (started_at(T - 48 * H, T - 30 * H), T, PRIOR / 26),  # older than the window: forgotten
    ],
)
def test_rate(history, now, rate):
    """The rate counts the new actions seen in the last day plus two hours of prior, over the time observed plus the prior's."""
    assert rate_per_hour(history, now=now) == pytest.approx(rate)


def sqrt_law(arrivals: int) -> float:
    """Return the idle interval the square-root law gives ``arrivals`` in 22 h (plus the prior's two hours), within [30, 600]."""
    return min(max(300 * (REFERENCE_PER_HOUR / ((arrivals + PRIOR) / 24)) ** 0.5, 30), 600)


@pytest.mark.parametrize(
    ("arrivals", "idle"),
    [
        (11, 300.0),  # 11 in 22 h (+ the prior): the reference rate, RELAY_IDLE_POLL_INTERVAL
        (95, sqrt_law(95)),  # about 4 an hour: 8x the reference rate, sqrt(8)x shorter (about 106 s)
        (0, 600),  # none: longer, up to twice the idle interval
        (2000, 30),  # very busy: never under the fast pace
    ],
)
def test_idle_interval_follows_the_arrival_rate(arrivals, idle):
    """The idle interval is RELAY_IDLE_POLL_INTERVAL x sqrt(reference rate / rate), within [fast, 2 x idle]."""
    history = started_at(T - 22 * H, *(T - i * 22 * H / max(arrivals, 1) for i in range(arrivals)))
    assert idle_interval_s(history, now=T, idle_s=300, fast_s=30) == pytest.approx(idle, abs=0.1)


def test_a_baseline_is_learned_as_a_watched_day():
    """The first poll's baseline counts as watched from where its reading began: its arrivals set the rate at once."""
    day = tuple(T - i * 1800 for i in range(48))  # two an hour over the last day
    history = learn(History(), Seen(created=day, durations_s=(60.0,) * 5, since=T - 24 * H), now=T)
    assert history.since == T - 24 * H
    assert rate_per_hour(history, now=T) == pytest.approx((48 + PRIOR) / 26)
    assert learn(history, Seen(since=T - 48 * H), now=T + 1).since == T - 24 * H  # only the first reading sets it


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "not json",
        "[]",
        '{"since": 1}',
        '{"since": "x", "created": [], "durations_s": []}',
        '{"since": null, "created": "123", "durations_s": []}',
        '{"since": null, "created": [1e999], "durations_s": []}',
        '{"since": null, "created": [null], "durations_s": []}',
    ],
)
def test_a_stored_history_that_cannot_be_read_is_ignored(text):
    """Anything but a readable stored history gives None: the relay starts from the prior, it never fails on it."""
    assert from_text(text) is None


def test_a_stored_history_round_trips():
    """What is stored is read back (to the second), so a restart or a new leader resumes the learning."""
    history = History(since=T - H, created=(T - 100.4, T - 10.0), durations_s=(61.25, 300.0))
    assert from_text(to_text(history)) == History(since=T - H, created=(T - 100.0, T - 10.0), durations_s=(61.2, 300.0))
    assert from_text('{"since": null, "created": [], "durations_s": [5, -1]}') == History(durations_s=(5.0,))


def test_an_arrival_dated_far_in_the_future_is_not_learned():
    """A created_at minutes ahead (clock skew) counts; one far ahead (a wrong clock, a lying peer) would count for ever and is dropped."""
    history = learn(History(), Seen(created=(T + 60, T + 3600, T + 86400 * 365)), now=T)
    assert history.created == (T + 60,)


def test_learn_keeps_a_bounded_window():
    """Arrivals older than the window drop out, negative durations are ignored, and both lists stay bounded."""
    history = learn(History(), Seen(created=(T - WINDOW_S - 1, T - 5), durations_s=(40.0, -3.0)), now=T)
    assert (history.since, history.created, history.durations_s) == (T, (T - 5,), (40.0,))
    many = learn(history, Seen(created=tuple(T - i for i in range(MAX_SAMPLES + 10)), durations_s=(1.0,) * (MAX_SAMPLES + 10)), now=T + 1)
    assert (many.since, len(many.created), len(many.durations_s)) == (T, MAX_SAMPLES, MAX_SAMPLES)


@pytest.mark.parametrize(
    ("durations", "typical"),
    [
        ((), None),
        ((10.0, 20.0, 30.0, 40.0), None),  # fewer than five finished actions teach nothing
        ((10.0, 20.0, 30.0, 40.0, 50.0), 50.0),
        (tuple(float(d) for d in range(1, 21)), 18.0),  # the 90th percentile of twenty
    ],
)
def test_typical_duration(durations, typical):
    """The typical duration is the one nine in ten finished actions stayed under, once five have finished."""
    assert typical_duration_s(History(durations_s=durations)) == typical


def test_durations_need_both_timestamps():
    """A duration is updated_at minus created_at; an entry missing either gives none."""
    assert durations_from([(T, T + 90), (None, T), (T, None)]) == (90.0,)


def test_a_silent_action_is_polled_fast_while_younger_than_most_finished_ones():
    """An action reporting no progress is polled at the fast pace while younger than the typical duration, then backs off."""
    cadence = Cadence.of(pacing="progress", fast_s=30, idle_s=300)
    silent = Observed(id="a", progress=0, created_at=T, updated_at=T)
    learned = Pacing(interval_s=30, history=History(since=T - H, durations_s=(600.0,) * 5))
    facts = CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(silent,))
    state, _ = succeeded(learned, facts, cadence=cadence, now=T)
    assert succeeded(state, facts, cadence=cadence, now=T + 400)[1].interval_s == 30
    assert succeeded(Pacing(interval_s=30), facts, cadence=cadence, now=T)[0].tracks  # (no history: first minute fast)
    untaught, _ = succeeded(Pacing(interval_s=30), facts, cadence=cadence, now=T)
    assert succeeded(untaught, facts, cadence=cadence, now=T + 400)[1].interval_s == 170  # half the time since its first minute


def test_the_arrival_rate_sets_progress_pacing_idle_and_a_monthly_budget_only_lengthens_it():
    """With nothing in flight progress pacing waits the rate's idle interval, or a monthly budget's if that is longer."""
    cadence = Cadence.of(pacing="progress", fast_s=30, idle_s=300)
    busy_day = Pacing(interval_s=30, history=started_at(T - 22 * H, *(T - i * 300 for i in range(264))))
    quiet = CycleFacts(in_flight=0, transitions=0, first_run=False)
    assert succeeded(busy_day, quiet, cadence=cadence, now=T)[1].interval_s == pytest.approx(300 * (REFERENCE_PER_HOUR / ((264 + PRIOR) / 24)) ** 0.5)
    budgeted = CycleFacts(in_flight=0, transitions=0, first_run=False, idle_s=500)
    assert succeeded(busy_day, budgeted, cadence=cadence, now=T)[1].interval_s == 500


def test_a_binding_monthly_budget_slows_the_following_of_silent_actions_too():
    """When a monthly budget's idle interval is k times the rate's, an action without an estimate is followed k times slower."""
    cadence = Cadence.of(pacing="progress", fast_s=30, idle_s=300)
    at_reference = Pacing(interval_s=30, history=started_at(T - 22 * H, *(T - i * 22 * H / 11 for i in range(11))))  # idle: 300 s
    silent = Observed(id="a", progress=0, created_at=T, updated_at=T)
    facts = CycleFacts(in_flight=1, transitions=0, first_run=False, observed=(silent,))
    assert succeeded(at_reference, facts, cadence=cadence, now=T)[1].interval_s == 30
    assert succeeded(at_reference, replace(facts, idle_s=600), cadence=cadence, now=T)[1].interval_s == pytest.approx(60)
    assert succeeded(at_reference, replace(facts, idle_s=200), cadence=cadence, now=T)[1].interval_s == 30  # not binding
