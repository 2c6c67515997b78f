"""PURE: when the relay counts as alive and as ready (the rules behind /healthz and /readyz).

No I/O: the app passes in what it saw (last successful poll, last scheduler tick, whether
it is stopping, a store problem) and gets a verdict with a short reason.
"""

from __future__ import annotations

from collections.abc import Mapping

STALE_AFTER_POLLS = 3
MIN_STALE_AFTER_S = 120.0  # one request may retry for 60 s (RetryPolicy.max_total_s): one slow cycle is not an outage
MAX_TICK_SILENCE_S = 30.0
MAX_POLL_S = 900.0


def stale_after_s(poll_interval_s: float) -> float:
    """Return how old the last successful poll may be while the relay counts as ready."""
    return max(STALE_AFTER_POLLS * poll_interval_s, MIN_STALE_AFTER_S)


def readiness(
    last_ok_at: float | None,
    *,
    now: float,
    poll_interval_s: float,
    auth_failed: bool,
    stopping: bool = False,
    store_problem: str | None = None,
) -> tuple[bool, str]:
    """Decide readiness: not stopping, the state database works, credentials accepted, a poll succeeded within ``stale_after_s``.

    ``poll_interval_s`` is the longest interval the scheduler may be using now (the idle
    interval, when the relay has slowed down), so slowing down never reads as an outage.
    """
    if stopping:
        return False, "shutting down"
    if store_problem is not None:
        return False, store_problem
    if auth_failed:
        return False, "Voucherify refused the credentials (wrong keys or wrong cluster)"
    if last_ok_at is None:
        return False, "no successful poll yet"
    age_s, limit_s = max(0.0, now - last_ok_at), stale_after_s(poll_interval_s)
    if age_s > limit_s:
        return False, f"last successful poll {age_s:.0f}s ago (limit {limit_s:.0f}s)"
    return True, f"last successful poll {age_s:.0f}s ago"


def follower_readiness(lease_ok_age_s: float | None, *, max_age_s: float, lease_error: str | None, stopping: bool = False) -> tuple[bool, str]:
    """Decide a follower's readiness: it polls nothing, so it needs a recent answered lease attempt (a database round trip)."""
    if stopping:
        return False, "shutting down"
    if lease_error is not None:
        return False, f"cannot reach the state database ({lease_error})"
    if lease_ok_age_s is None:
        return False, "no answer from the state database yet"
    if lease_ok_age_s > max_age_s:
        return False, f"last state database answer {lease_ok_age_s:.0f}s ago (limit {max_age_s:.0f}s)"
    return True, f"follower: another replica polls; state database answered {lease_ok_age_s:.0f}s ago"


def liveness(
    last_tick_at: float | None,
    *,
    now: float,
    scheduler_running: bool,
    poll_started_at: float | None = None,
    max_silence_s: float = MAX_TICK_SILENCE_S,
    max_poll_s: float = MAX_POLL_S,
) -> tuple[bool, str]:
    """Decide liveness: the scheduler runs, ticked lately (the loop is not blocked), no poll hangs.

    ``last_tick_at`` is when a scheduled job last ran (the 1 s dispatch job, say) and
    ``poll_started_at`` when the running poll began (None when none runs); all on one clock.
    """
    if not scheduler_running:
        return False, "scheduler is not running"
    if last_tick_at is not None and now - last_tick_at > max_silence_s:
        return False, f"no scheduler tick for {now - last_tick_at:.0f}s"
    if poll_started_at is not None and now - poll_started_at > max_poll_s:
        return False, f"a poll cycle has been running for {now - poll_started_at:.0f}s"
    return True, "scheduler running"


def all_ready(verdicts: Mapping[str, tuple[bool, str]]) -> tuple[bool, str]:
    """Return the relay's readiness from each project's: ready when all are; the detail names each project that is not."""
    if len(verdicts) == 1:
        return next(iter(verdicts.values()))
    failing = [f"{name}: {detail}" for name, (ok, detail) in verdicts.items() if not ok]
    if failing:
        return False, "; ".join(failing)
    return True, f"{len(verdicts)} projects ready"
