"""PURE: when a replica may trust its polling lease, and how each lease attempt moves that belief.

The database judges expiry by its own clock; a replica cannot read that clock, so it
trusts its lease only until (the monotonic moment it SENT the renewal) + the validity the
database granted - a safety margin (River's ``leadershipTerm.trustedUntil``). A renewal
sent at ``t`` reaches the database after ``t``, so the database's expiry is never earlier
than this replica's own deadline. A renewal that fails in any way steps down at once.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_RETRY_S = 0.25  # a follower's pause between attempts: the hand-over time after a release
MIN_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a lease lives, how often the holder renews it and followers try for it."""

    ttl_s: float
    renew_every_s: float
    retry_every_s: float
    margin_s: float


def timing_for(ttl_s: float) -> LeaseTiming:
    """Return the cadence for a lease of ``ttl_s``: renew at a fifth of it; followers retry at a tenth, at most every 0.25 s.

    A released lease (SIGTERM, a rolling update) is taken by the next follower attempt, so
    the follower cadence is the hand-over time: four cheap one-row queries a second buy a
    hand-over under a second (10 s -> renew 2 s, retry 0.25 s).
    """
    return LeaseTiming(ttl_s=ttl_s, renew_every_s=ttl_s / 5, retry_every_s=min(ttl_s / 10, MAX_RETRY_S), margin_s=max(MIN_MARGIN_S, ttl_s / 10))


@dataclass(frozen=True, slots=True)
class Standing:
    """What a replica believes about the lease: the term it holds (None: a follower) and until when to trust it."""

    term: int | None = None
    trusted_until: float = 0.0  # monotonic seconds

    def trusted(self, now: float) -> bool:
        """Whether this replica may start a Voucherify request or a commit now."""
        return self.term is not None and now < self.trusted_until


@dataclass(frozen=True, slots=True)
class Change:
    """What one lease attempt changed: ``acquired``, ``renewed``, ``lost``, ``follower`` (nothing held before or after)."""

    kind: str
    term: int | None = None
    reason: str | None = None


def granted(standing: Standing, *, term: int, valid_for_s: float, sent_at: float, timing: LeaseTiming) -> tuple[Standing, Change]:
    """Return the belief after the database granted ``term`` for ``valid_for_s``, to an attempt sent at ``sent_at``."""
    trust_s = max(0.0, min(valid_for_s, timing.ttl_s) - timing.margin_s)
    after = Standing(term=term, trusted_until=sent_at + trust_s)
    kind = "renewed" if standing.term == term else "acquired"
    return after, Change(kind=kind, term=term)


def refused(standing: Standing, *, reason: str) -> tuple[Standing, Change]:
    """Return the belief after an attempt that did not get the lease (held by another, an error, a timeout)."""
    if standing.term is None:
        return standing, Change(kind="follower", reason=reason)
    return Standing(), Change(kind="lost", term=standing.term, reason=reason)


def expired(standing: Standing, *, now: float) -> tuple[Standing, Change | None]:
    """Step down if the trust window ran out before a renewal answered (a paused process, a stalled loop)."""
    if standing.term is None or standing.trusted(now):
        return standing, None
    return Standing(), Change(kind="lost", term=standing.term, reason="expired")


def attempt_timeout_s(standing: Standing, *, now: float, timing: LeaseTiming) -> float:
    """Return how long the next attempt may take: a leader never waits past its trust window."""
    if standing.term is None:
        return max(timing.retry_every_s, timing.ttl_s / 2)
    return max(0.0, standing.trusted_until - now)


def next_attempt_in_s(standing: Standing, *, timing: LeaseTiming) -> float:
    """Return the pause before the next attempt: a holder renews, a follower retries sooner."""
    return timing.renew_every_s if standing.term is not None else timing.retry_every_s


# --- spreading projects over replicas (issue 13) ------------------------------------------
MEMBER_TTL_FRACTION = 0.8  # a replica's membership outlives a missed renewal but ends before its leases do


def fair_share(projects: int, members: int) -> int:
    """Return how many project leases one replica may hold: the projects spread evenly over the live replicas, rounded up."""
    return max(1, -(-projects // max(1, members)))


def may_take(held: int, share: int) -> bool:
    """Whether a replica holding ``held`` leases may try for another one."""
    return held < share


def surplus(held: int, share: int) -> int:
    """Return how many leases a replica should hand over (one at a time) because others joined."""
    return max(0, held - share)
