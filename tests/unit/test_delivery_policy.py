"""The delivery retry policy (tenacity retry/wait/stop on a row's attempts and age): one row per case, jitter off."""

from __future__ import annotations

import pytest
from tenacity import wait_none

from daemon.delivery_policy import DeliveryPolicy, Verdict
from daemon.sinks import SendResult

CREATED = 1_000_000.0
DAY_S = 86400.0
POLICY = DeliveryPolicy(max_delay_s=300.0, max_age_s=DAY_S, jitter=wait_none())


def failed(status: int | None = 503, *, retry_after_s: float | None = None, permanent: bool = False, gone: bool = False) -> SendResult:
    """Return a failed attempt's answer."""
    return SendResult(delivered=False, status=status, detail=f"HTTP {status}", retry_after_s=retry_after_s, permanent=permanent, gone=gone)


@pytest.mark.parametrize(
    ("result", "attempts", "age_s", "verdict"),
    [
        (SendResult(delivered=True, status=200, detail="HTTP 200"), 0, 0.0, Verdict("delivered")),
        (SendResult(delivered=True, status=204, detail="HTTP 204"), 9, DAY_S + 1, Verdict("delivered")),
        (failed(), 0, 0.0, Verdict("retry", 0.5)),
        (failed(), 1, 10.0, Verdict("retry", 1.0)),
        (failed(), 3, 10.0, Verdict("retry", 4.0)),
        (failed(None), 5, 10.0, Verdict("retry", 16.0)),
        (failed(), 9, 10.0, Verdict("retry", 150.0)),
        (failed(), 10_000, 10.0, Verdict("retry", 150.0)),
        (failed(429, retry_after_s=30.0), 0, 0.0, Verdict("retry", 30.0)),
        (failed(429, retry_after_s=30.0), 12, 10.0, Verdict("retry", 30.0)),
        (failed(503, retry_after_s=0.0), 0, 0.0, Verdict("retry", 0.25)),
        (failed(503, retry_after_s=7200.0), 0, 0.0, Verdict("retry", 3600.0)),
        (failed(429, retry_after_s=3600.0), 0, DAY_S - 100, Verdict("retry", 100.0)),
        (failed(), 20, DAY_S - 0.5, Verdict("retry", 0.5)),
        (failed(), 20, DAY_S, Verdict("expired")),
        (failed(429, retry_after_s=1.0), 3, DAY_S + 3600, Verdict("expired")),
        (failed(404, permanent=True), 0, 0.0, Verdict("rejected")),
        (failed(404, permanent=True), 50, DAY_S + 1, Verdict("rejected")),
        (failed(410, gone=True), 0, 0.0, Verdict("gone")),
        (failed(410, gone=True, permanent=True), 0, 0.0, Verdict("gone")),
    ],
)
def test_policy_table(result, attempts, age_s, verdict):
    """Backoff doubles from 0.5 s up to half the cap, Retry-After is clamped, no wait passes the max age, permanent or gone answers never retry."""
    assert POLICY.decide(result, attempts=attempts, created_at=CREATED, now=CREATED + age_s) == verdict


@pytest.mark.parametrize(("max_delay_s", "attempts", "expected_s"), [(10.0, 0, 0.5), (10.0, 3, 4.0), (10.0, 4, 5.0), (1.0, 6, 0.5)])
def test_retry_max_delay_caps_the_backoff(max_delay_s, attempts, expected_s):
    """RELAY_DELIVERY_RETRY_MAX_DELAY caps the backoff: its fixed half never exceeds half the cap."""
    policy = DeliveryPolicy(max_delay_s=max_delay_s, jitter=wait_none())
    assert policy.decide(failed(), attempts=attempts, created_at=CREATED, now=CREATED + 1) == Verdict("retry", expected_s)


def test_jitter_spreads_retries_over_the_upper_half_of_the_backoff():
    """With the default random jitter, the fourth attempt's delay lies in [4 s, 8 s] and is not the same every time."""
    policy = DeliveryPolicy(max_delay_s=300.0)
    delays = [policy.decide(failed(), attempts=3, created_at=CREATED, now=CREATED + 1).delay_s for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 1.0, "jitter spreads the retries of many rows apart"


def test_the_row_is_seen_by_tenacity_as_attempt_n_since_its_creation():
    """Tenacity's call state for a row counts the persisted attempts and measures age from the row's creation."""
    state = POLICY.call_state(failed(), attempts=4, created_at=CREATED, now=CREATED + 42.0)
    assert (state.attempt_number, state.seconds_since_start, state.outcome.result().status) == (5, 42.0, 503)
