"""Value objects shared by the pure core and the adapters. No I/O here."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TERMINAL_STATUSES = frozenset({"DONE", "FAILED"})
ACTION_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # a plain Voucherify id: safe as one URL path segment, as is


class EventType(StrEnum):
    """The event types the relay emits; their strings are a contract."""

    STARTED = "async_action.started"
    COMPLETED = "async_action.completed"
    FAILED = "async_action.failed"
    STUCK = "async_action.stuck"
    TEST = "relay.test"


@dataclass(frozen=True, slots=True)
class ActionSnapshot:
    """What the list endpoint tells us about one async action at one moment."""

    id: str
    type: str
    status: str
    operation_status: str | None
    progress: int | None
    created_at: str | None
    updated_at: str | None

    @property
    def terminal(self) -> bool:
        """Whether the action has reached a state it will not leave."""
        return self.status in TERMINAL_STATUSES

    def same_state(self, other: ActionSnapshot) -> bool:
        """Whether nothing the relay tracks differs from ``other``."""
        return (self.status, self.operation_status, self.progress, self.updated_at) == (
            other.status,
            other.operation_status,
            other.progress,
            other.updated_at,
        )


def is_action_id(value: object) -> bool:
    """Whether ``value`` is a plain Voucherify action id (anything else must never reach a URL)."""
    return isinstance(value, str) and re.fullmatch(ACTION_ID_PATTERN, value) is not None


DEFAULT_PROJECT = "default"


def event_id_for(action_id: str, event_type: str, *, project: str = DEFAULT_PROJECT) -> str:
    """Derive the event id from (project, action id, event type): same event, same id, forever.

    The project ``default`` keeps the id of a single-project relay, so upgrading changes no id;
    other projects mix their name in, so two projects' actions never share one.
    """
    key = f"{action_id}\x00{event_type}" if project == DEFAULT_PROJECT else f"{project}\x00{action_id}\x00{event_type}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"evt_{digest[:32]}"


def in_project(event: Event, project: str) -> Event:
    """Return ``event`` as made by ``project``: ``data.project`` set, its id derived with the project."""
    data = {**event.data, "project": project}
    return Event(id=event_id_for(str(event.data.get("id", "")), event.type, project=project), type=event.type, timestamp=event.timestamp, data=data)


@dataclass(frozen=True, slots=True)
class Event:
    """One notification: the Standard Webhooks style envelope plus its id."""

    id: str
    type: str
    timestamp: str
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        """Return the JSON document receivers get."""
        return {"type": self.type, "timestamp": self.timestamp, "data": self.data}

    def body(self) -> bytes:
        """Return the exact bytes sent (and signed) for this event."""
        return json.dumps(self.envelope(), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event bound for one sink, as the outbox holds it."""

    row_id: int
    event_id: str
    event_type: str
    sink: str
    action_id: str
    body: bytes
    attempts: int
    created_at: float
    claim: str | None = None  # the shared outbox's claim token (PostgreSQL); settles only with it
    project: str = DEFAULT_PROJECT  # whose action it is (for log lines)

    def envelope(self) -> dict[str, Any]:
        """Decode the stored event body."""
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


def parse_timestamp(value: object) -> datetime | None:
    """Parse Voucherify's ISO-8601 timestamps; anything unparsable is None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_timestamp(moment: datetime) -> str:
    """Format like Voucherify does: UTC, milliseconds, a trailing Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
