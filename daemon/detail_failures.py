"""When to stop fetching a finished action's detail and emit its event from the list entry.

A detail that keeps failing (an undecodable body, a shape that breaks us, a GET that
errs every time) must not hold its event back forever. The relay gives up once both
hold: at least ``max_attempts`` failed fetches (counted in memory, per action) and the
action finished at least ``give_up_after_s`` ago (its ``updated_at``; the first
failure when that is unreadable). A short outage of the detail endpoint therefore
only delays events; a poison record costs a few cycles and is then delivered with
``detail_available: false`` and ``detail_error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

DETAIL_MAX_ATTEMPTS = 5
DETAIL_GIVE_UP_AFTER_S = 600.0
MAX_TRACKED = 10_000


@dataclass(slots=True)
class DetailFailures:
    """Failed detail fetches per action id, in memory (a restart starts counting again)."""

    max_attempts: int = DETAIL_MAX_ATTEMPTS
    give_up_after_s: float = DETAIL_GIVE_UP_AFTER_S
    _seen: dict[str, tuple[int, datetime]] = field(default_factory=dict)

    def record(self, action_id: str, *, now: datetime, finished_at: datetime | None) -> tuple[int, bool]:
        """Count one failure; return the attempts so far and whether to give up now."""
        attempts, first = self._seen.get(action_id, (0, now))
        attempts += 1
        if len(self._seen) >= MAX_TRACKED and action_id not in self._seen:
            self._seen.pop(next(iter(self._seen)))
        self._seen[action_id] = (attempts, first)
        since = finished_at or first
        give_up = attempts >= self.max_attempts and (now - since).total_seconds() >= self.give_up_after_s
        if give_up:
            self.forget(action_id)
        return attempts, give_up

    def forget(self, action_id: str) -> None:
        """Drop the count (the detail arrived, or the relay gave up)."""
        self._seen.pop(action_id, None)
