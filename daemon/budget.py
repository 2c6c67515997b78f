"""The rolling-hour request budget (RELAY_API_BUDGET_PER_HOUR).

It is checked before every request, retries included, and seeded from the state
database at start, so a crash-looping relay cannot exceed it either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from daemon.errors import BudgetExhaustedError

WINDOW_S = 3600.0


class RequestBudget:
    """At most ``per_hour`` requests in any rolling 3600 s window."""

    def __init__(self, per_hour: int | None, *, history: Iterable[float] = ()) -> None:
        self.per_hour = per_hour
        self._sent: deque[float] = deque(sorted(history))

    def acquire(self, now: float) -> None:
        """Take one request from the budget, or raise BudgetExhaustedError."""
        self._expire(now)
        if self.per_hour is not None and len(self._sent) >= self.per_hour:
            retry_at = self._sent[0] + WINDOW_S
            msg = f"RELAY_API_BUDGET_PER_HOUR={self.per_hour} spent; next request allowed in {retry_at - now:.0f}s"
            raise BudgetExhaustedError(msg, retry_at=retry_at)
        self._sent.append(now)

    def used(self, now: float) -> int:
        """Return the requests sent in the last hour."""
        self._expire(now)
        return len(self._sent)

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - WINDOW_S:
            self._sent.popleft()
