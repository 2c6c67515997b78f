"""The store ports: action state + cursor, the outbox, the API call log.

Every method is ``async``: the SQLite adapter runs its sub-millisecond calls inline on
the event loop, a network database (PostgreSQL) awaits its driver. ``commit_cycle``
writes a cycle's state and its outbox rows in one transaction, whatever the adapter.

On PostgreSQL several replicas share one outbox: ``claim_due`` hands each row to one
replica at a time (a claim token with an expiry, pushed on by ``extend_claims`` while the
row is still being sent), and ``apply_results`` settles a row only while that replica's
token still holds it. ``claim_due(skip=...)`` leaves out rows this process holds already:
on SQLite a row stays pending while it is sent, so that is what keeps it from being sent twice.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Delivery, Event


def meta_key(project: str, key: str) -> str:
    """Return where ``project`` keeps the meta value ``key``: the project ``default`` keeps the single-project keys, so an upgrade moves nothing."""
    return key if project == DEFAULT_PROJECT else f"{project}/{key}"


def message_key(project: str, action_id: str) -> str:
    """Return the key a sink keeps an action's Slack message under: the action id, prefixed with a named project's name."""
    return action_id if project == DEFAULT_PROJECT else f"{project}/{action_id}"


# A shared outbox's claim lives this long unless its holder extends it (the dispatcher does, every third of it,
# for rows it still holds): a dead replica's rows come back after at most this, however long a send may take.
CLAIM_TTL_S = 30.0


@dataclass(frozen=True, slots=True)
class Fence:
    """The polling lease a cycle is committed under: the commit checks it still holds, in the same transaction."""

    name: str
    holder: str
    term: int


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

    def encode(self) -> str:
        """Return the backlog as the JSON text both adapters keep in their meta table."""
        return json.dumps({name: getattr(self, name) for name in Backlog.__slots__})

    @classmethod
    def decode(cls, raw: str | None) -> Backlog | None:
        """Read a persisted backlog; a value this version cannot read is dropped (the next cap hit starts anew)."""
        if raw is None:
            return None
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None


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
    project: str = DEFAULT_PROJECT


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

    def changes_state(self) -> bool:
        """Whether committing this result writes anything."""
        flags = (self.baseline_done, self.newest_created_at, self.backlog_changed)
        return any((self.snapshots, self.events, self.forgotten, self.stuck, *flags))


@dataclass(frozen=True, slots=True)
class AttemptResults:
    """The outcome of a batch of delivery attempts, written together."""

    delivered: Sequence[int] = ()
    retries: Sequence[tuple[int, float, str]] = ()  # (row id, next attempt at, error)
    dead: Sequence[tuple[int, str]] = ()  # (row id, reason)
    released: Sequence[int] = ()  # claimed but not attempted (shutting down): free for any replica now
    claims: Mapping[int, str] = field(default_factory=dict)  # row id -> the claim token it was handed out with


class ActionStore(Protocol):
    """Action snapshots, the cursor and small meta values; a cycle's outbox rows are written with them."""

    async def load_cursor(self) -> Cursor: ...
    async def get_snapshots(self, ids: Iterable[str]) -> dict[str, ActionSnapshot]: ...
    async def in_flight(self) -> dict[str, ActionSnapshot]: ...
    async def stuck_notified(self) -> set[str]: ...
    async def commit_cycle(self, result: CycleResult, *, now: float, fence: Fence | None = None) -> int: ...
    async def load_meta(self, key: str) -> str | None: ...
    async def save_meta(self, key: str, value: str) -> None: ...
    async def prune(self, *, older_than: float) -> int: ...


class Outbox(Protocol):
    """Deliveries waiting, sent or dead-lettered."""

    async def claim_due(self, *, now: float, limit: int, sink: str | None = None, skip: Collection[int] = ()) -> builtins.list[Delivery]: ...
    async def extend_claims(self, claims: Mapping[int, str]) -> None: ...
    async def apply_results(self, results: AttemptResults, *, now: float) -> None: ...
    async def dead_letter_unknown_sinks(self, known: Iterable[str]) -> int: ...
    async def dead_letter_unknown_projects(self, known: Iterable[str]) -> int: ...
    async def list(self, *, dead: bool, limit: int = 100, project: str | None = None) -> builtins.list[OutboxRow]: ...
    async def replay(self, row_id: int | None, *, now: float, project: str | None = None) -> int: ...
    async def stats(self) -> OutboxStats: ...
    async def prune(self, *, older_than: float) -> int: ...


class CallLog(Protocol):
    """When API requests were sent, so the rolling-hour budget holds across restarts."""

    async def record(self, moments: Iterable[float]) -> None: ...
    async def since(self, moment: float) -> list[float]: ...
    async def prune(self, *, older_than: float) -> int: ...


Stage = Literal["live", "final", "replied"]
STAGES: tuple[Stage, ...] = ("live", "final", "replied")


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a sink posted an action's live Slack message, and how far it got.

    ``stage``: ``live`` (showing progress), ``final`` (its end state shown), ``replied``
    (and the failure rows posted in its thread).
    """

    channel: str
    ts: str
    stage: Stage = "live"


class MessageRefs(Protocol):
    """The Slack message each (sink, action) was posted as, so a restart or a failover updates the same one."""

    async def get(self, sink: str, action_id: str) -> MessageRef | None: ...
    async def put(self, sink: str, action_id: str, ref: MessageRef, *, now: float) -> None: ...
    async def prune(self, *, older_than: float) -> int: ...


@dataclass(frozen=True, slots=True)
class Stores:
    """The opened ports of one database, and how to check and close it."""

    actions: ActionStore
    outbox: Outbox
    calls: CallLog
    messages: MessageRefs
    location: str  # for logs; never holds a secret
    close: Callable[[], Awaitable[None]]
    file_problem: Callable[[], str | None]  # what happened to the storage underneath since it was opened, or None
    schema_version: Callable[[], Awaitable[int]]
    kind: str = "sqlite"  # "sqlite" or "postgres"
    wake: asyncio.Event | None = None  # set when another replica (or this one) enqueued rows: LISTEN/NOTIFY
    database: Any = None  # the PostgresDatabase (pool, transactions) for the lease; None on SQLite
    scope: Callable[[str], tuple[ActionStore, CallLog]] | None = None  # a project's own action store and call log
    project: str = DEFAULT_PROJECT  # whose actions and calls ``actions`` and ``calls`` hold

    def describe(self) -> str:
        """Name the database for logs and `check`, never with a password."""
        return self.location

    def for_project(self, name: str) -> Stores:
        """Return these ports with ``actions`` and ``calls`` holding project ``name``'s state (the outbox is shared)."""
        if name == self.project or self.scope is None:
            return self
        actions, calls = self.scope(name)
        return dataclasses.replace(self, actions=actions, calls=calls, project=name)
