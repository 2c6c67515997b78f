"""The StateStore port: where action state and the outbox live."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from daemon.model import ActionSnapshot, Delivery, Event


@dataclass(frozen=True, slots=True)
class Backlog:
    """List pages a capped cycle still owes: created_at in [owed_until, resume_end_date).

    ``baseline_since`` is set while the backlog is left over from the first run: its
    unknown finished actions are history unless they finished at or after that moment.
    """

    resume_end_date: str
    owed_until: str
    started_at: float
    pages_read: int = 0
    baseline_since: str | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far earlier polls got: baseline taken, the newest action seen, list pages still owed."""

    first_run: bool
    newest_created_at: str | None
    backlog: Backlog | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row as operators see it."""

    row_id: int
    event_id: str
    event_type: str
    sink: str
    action_id: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Outbox depth figures for logs and metrics."""

    pending: int
    dead: int
    oldest_pending_created_at: float | None


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one poll cycle decided: state to persist and events to enqueue, atomically."""

    snapshots: Sequence[ActionSnapshot]
    events: Sequence[tuple[Event, Sequence[str]]]
    forgotten: Sequence[str] = ()
    stuck: Sequence[str] = ()
    newest_created_at: str | None = None
    baseline_done: bool = False
    backlog: Backlog | None = None
    backlog_changed: bool = False  # True: persist ``backlog`` (None clears it)


@dataclass(frozen=True, slots=True)
class AttemptResults:
    """The outcome of a batch of delivery attempts, written together."""

    delivered: Sequence[int] = ()
    retries: Sequence[tuple[int, float, str]] = ()  # (row id, next attempt at, error)
    dead: Sequence[tuple[int, str]] = ()  # (row id, reason)


class StateStore(Protocol):
    """Durable state: action snapshots, the cursor, the outbox, the API call log."""

    def load_cursor(self) -> Cursor: ...
    def load_meta(self, key: str) -> str | None: ...
    def save_meta(self, key: str, value: str) -> None: ...
    def get_snapshots(self, ids: Iterable[str]) -> dict[str, ActionSnapshot]: ...
    def in_flight(self) -> dict[str, ActionSnapshot]: ...
    def stuck_notified(self) -> set[str]: ...
    def commit_cycle(self, result: CycleResult, *, now: float) -> int: ...
    def enqueue(self, event: Event, sinks: Sequence[str], *, now: float) -> int: ...
    def claim_due(self, *, now: float, limit: int, sink: str | None = None) -> list[Delivery]: ...
    def dead_letter_unknown_sinks(self, known: Iterable[str]) -> int: ...
    def mark_delivered(self, row_id: int, *, now: float) -> None: ...
    def reschedule(self, row_id: int, *, next_attempt_at: float, error: str) -> None: ...
    def mark_dead(self, row_id: int, *, reason: str) -> None: ...
    def apply_results(self, results: AttemptResults, *, now: float) -> None: ...
    def list_outbox(self, *, dead: bool, limit: int = 100) -> list[OutboxRow]: ...
    def replay(self, row_id: int | None, *, now: float) -> int: ...
    def outbox_stats(self) -> OutboxStats: ...
    def prune(self, *, older_than: float, calls_older_than: float | None = None) -> tuple[int, int]: ...
    def record_api_calls(self, moments: Iterable[float]) -> None: ...
    def api_calls_since(self, moment: float) -> list[float]: ...
    def close(self) -> None: ...
