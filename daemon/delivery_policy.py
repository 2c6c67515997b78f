"""PURE: the delivery retry policy, written with tenacity's ``retry``/``wait``/``stop`` primitives.

The outbox keeps the schedule (attempt count, next attempt time) in the database, so a
delivery's retries outlive the process; nothing sleeps in a loop. After each attempt the
dispatcher asks :meth:`DeliveryPolicy.decide`, which builds a :class:`tenacity.RetryCallState`
for the row (``attempt_number`` = persisted attempts + 1, ``start_time`` = when the row was
created, the outcome = the sink's :class:`SendResult`, all on the wall clock) and asks:

- ``retry``: retry unless the answer was delivered, permanent or gone (each sink decides
  what is permanent; the table is in docs/events.md);
- ``stop``: give up once the row is ``RELAY_DELIVERY_MAX_AGE`` old (``stop_after_delay``);
- ``wait``: the receiver's ``Retry-After`` clamped to [0.25 s, 1 h], else exponential
  backoff with equal jitter (half fixed, half random) capped by
  ``RELAY_DELIVERY_RETRY_MAX_DELAY``; never past the row's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tenacity import Future, RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

from daemon.sinks import MAX_RETRY_AFTER_S, SendResult

BASE_DELAY_S = 1.0
MIN_RETRY_AFTER_S = 0.25  # "Retry-After: 0" must not become a hot loop

Outcome = Literal["delivered", "retry", "gone", "rejected", "expired"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a row after one attempt; ``delay_s`` only for ``retry``."""

    outcome: Outcome
    delay_s: float = 0.0


def should_retry(result: SendResult) -> bool:
    """Whether a later attempt may succeed: not delivered, not permanent, not gone."""
    return not (result.delivered or result.permanent or result.gone)


class wait_retry_after(wait_base):  # noqa: N801 - named like tenacity's own waits
    """Wait the receiver's ``Retry-After`` (clamped), else fall back to ``backoff``."""

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        """Return the seconds to wait before the next attempt."""
        asked_s = _result(retry_state).retry_after_s
        if asked_s is None:
            return self.backoff(retry_state)
        return min(max(asked_s, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


class wait_within(wait_base):  # noqa: N801 - named like tenacity's own waits
    """Cap ``wait`` so the next attempt is no later than ``max_age_s`` after the row was created."""

    def __init__(self, wait: wait_base, *, max_age_s: float) -> None:
        self.wait = wait
        self.max_age_s = max_age_s

    def __call__(self, retry_state: RetryCallState) -> float:
        """Return the seconds to wait, at most the time the row has left."""
        left_s = self.max_age_s - (retry_state.seconds_since_start or 0.0)
        return max(0.0, min(self.wait(retry_state), left_s))


def equal_jitter_backoff(*, max_delay_s: float, jitter: wait_base | None = None) -> wait_base:
    """Return ``BASE * 2**attempts`` capped at ``max_delay_s``: half of it fixed, half ``jitter`` (random unless given)."""
    half_s = max_delay_s / 2
    fixed = wait_exponential(multiplier=BASE_DELAY_S / 2, max=half_s)
    return fixed + (jitter if jitter is not None else wait_random_exponential(multiplier=BASE_DELAY_S / 2, max=half_s))


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Backoff cap, and how long a delivery may keep failing before it is dead-lettered.

    ``jitter`` replaces the random half of the backoff (tests pass ``tenacity.wait_none()``).
    """

    max_delay_s: float = 300.0
    max_age_s: float = 86400.0
    jitter: wait_base | None = None
    retrying: Retrying = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        backoff = equal_jitter_backoff(max_delay_s=self.max_delay_s, jitter=self.jitter)
        retrying = Retrying(
            retry=retry_if_result(should_retry),
            stop=stop_after_delay(self.max_age_s),
            wait=wait_within(wait_retry_after(backoff), max_age_s=self.max_age_s),
        )
        object.__setattr__(self, "retrying", retrying)  # a frozen dataclass sets derived fields this way

    def decide(self, result: SendResult, *, attempts: int, created_at: float, now: float) -> Verdict:
        """Judge one attempt of a row that had ``attempts`` before it and was created at ``created_at``."""
        if result.delivered:
            return Verdict("delivered")
        state = self.call_state(result, attempts=attempts, created_at=created_at, now=now)
        if not self.retrying.retry(state):
            return Verdict("gone" if result.gone else "rejected")
        if self.retrying.stop(state):
            return Verdict("expired")
        return Verdict("retry", delay_s=float(self.retrying.wait(state)))

    def call_state(self, result: SendResult, *, attempts: int, created_at: float, now: float) -> RetryCallState:
        """Return tenacity's view of the row: this is attempt ``attempts + 1``, begun at ``created_at``, answered at ``now``."""
        state = RetryCallState(self.retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempts + 1
        state.start_time = created_at
        state.outcome = Future.construct(state.attempt_number, result, has_exception=False)
        state.outcome_timestamp = now
        return state


def _result(retry_state: RetryCallState) -> SendResult:
    outcome = retry_state.outcome
    if outcome is None or outcome.failed:
        msg = "the delivery policy judges a sink's answer, never an exception"
        raise RuntimeError(msg)
    result: SendResult = outcome.result()
    return result
