"""PURE lease-trust rule: when a replica trusts its lease, and how attempts move that belief."""

from __future__ import annotations

import pytest

from daemon.leadership import Standing, attempt_timeout_s, expired, granted, next_attempt_in_s, refused, timing_for

TIMING = timing_for(10.0)


def test_defaults_meet_the_failover_goal():
    """At the default TTL a holder renews every 2 s, followers retry every 0.25 s: a dead leader is replaced within TTL + 0.25 s <= 12 s."""
    assert (TIMING.renew_every_s, TIMING.retry_every_s, TIMING.margin_s) == (2.0, 0.25, 1.0)
    assert TIMING.ttl_s + TIMING.retry_every_s <= 12.0


@pytest.mark.parametrize(
    ("before", "grant", "kind", "trusted_until"),
    [
        (Standing(), (1, 10.0, 100.0), "acquired", 109.0),  # trust runs from when the attempt was SENT, less the margin
        (Standing(term=1, trusted_until=105.0), (1, 10.0, 104.0), "renewed", 113.0),
        (Standing(term=1, trusted_until=105.0), (2, 10.0, 104.0), "acquired", 113.0),  # a new term after a gap is a new acquisition
        (Standing(), (3, 4.0, 100.0), "acquired", 103.0),  # the database's shorter validity wins over the TTL
        (Standing(), (3, 30.0, 100.0), "acquired", 109.0),  # never trust longer than our own TTL
        (Standing(), (3, 0.5, 100.0), "acquired", 100.0),  # validity under the margin: granted but not trusted
    ],
)
def test_a_grant_is_trusted_until_send_time_plus_validity_minus_margin(before, grant, kind, trusted_until):
    """A grant sets the trust deadline from the moment the attempt was sent, never from when the answer came."""
    term, valid_for_s, sent_at = grant
    after, change = granted(before, term=term, valid_for_s=valid_for_s, sent_at=sent_at, timing=TIMING)
    assert change.kind == kind
    assert after.term == term
    assert after.trusted_until == pytest.approx(trusted_until)


@pytest.mark.parametrize(
    ("before", "kind"),
    [
        (Standing(term=4, trusted_until=200.0), "lost"),  # a failed renewal steps down at once, trust left or not
        (Standing(), "follower"),
    ],
)
def test_a_refused_or_failed_attempt_leaves_no_lease(before, kind):
    """A refusal, an error or a timeout leaves the replica a follower; a holder reports the loss with its term."""
    after, change = refused(before, reason="error")
    assert after == Standing()
    assert change.kind == kind
    assert change.reason == "error"


@pytest.mark.parametrize(
    ("standing", "now", "trusted"),
    [
        (Standing(term=1, trusted_until=109.0), 108.9, True),
        (Standing(term=1, trusted_until=109.0), 109.0, False),
        (Standing(term=None, trusted_until=109.0), 100.0, False),
    ],
)
def test_trust_ends_at_the_deadline(standing, now, trusted):
    """The lease is trusted strictly before its deadline and only while a term is held."""
    assert standing.trusted(now) is trusted


def test_a_paused_holder_steps_down_when_it_wakes_past_its_deadline():
    """A process resumed after its trust window reports the lease lost as expired before anything else."""
    after, change = expired(Standing(term=7, trusted_until=109.0), now=130.0)
    assert after == Standing()
    assert change is not None
    assert (change.kind, change.term, change.reason) == ("lost", 7, "expired")
    assert expired(Standing(term=7, trusted_until=109.0), now=108.0) == (Standing(term=7, trusted_until=109.0), None)


@pytest.mark.parametrize(
    ("standing", "now", "timeout_s", "pause_s"),
    [
        (Standing(term=1, trusted_until=109.0), 107.5, 1.5, 2.0),  # a renewal never waits past the trust window
        (Standing(term=1, trusted_until=109.0), 110.0, 0.0, 2.0),
        (Standing(), 100.0, 5.0, 0.25),
    ],
)
def test_attempt_timeouts_and_pauses(standing, now, timeout_s, pause_s):
    """A holder's renewal is bounded by its remaining trust and repeats every 2 s; a follower retries every 1 s."""
    assert attempt_timeout_s(standing, now=now, timing=TIMING) == pytest.approx(timeout_s)
    assert next_attempt_in_s(standing, timing=TIMING) == pause_s
