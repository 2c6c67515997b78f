"""PURE: compare what the list shows with what we knew, and decide what changed.

No I/O, no asyncio: the poller gathers inputs, calls :func:`diff`, applies the result.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from daemon.model import ActionSnapshot, parse_timestamp


@dataclass(frozen=True, slots=True)
class Change:
    """One action whose tracked state differs from what is stored."""

    snapshot: ActionSnapshot
    previous: ActionSnapshot | None
    emits: bool  # True: fetch the full action and emit a completion event

    @property
    def action_id(self) -> str:
        """Return the id of the action that changed."""
        return self.snapshot.id


def snapshot_from(item: Mapping[str, Any]) -> ActionSnapshot | None:
    """Build a snapshot from a list entry or a full action; None if it has no usable id."""
    action_id = item.get("id")
    if not isinstance(action_id, str) or not action_id:
        return None
    progress = item.get("progress")
    return ActionSnapshot(
        id=action_id,
        type=_text(item.get("type")) or "UNKNOWN",
        status=(_text(item.get("status")) or "UNKNOWN").upper(),
        operation_status=_text(item.get("operation_status")),
        progress=progress if isinstance(progress, int) and not isinstance(progress, bool) else None,
        created_at=_text(item.get("created_at")),
        updated_at=_text(item.get("updated_at")),
    )


def diff(
    previous: Mapping[str, ActionSnapshot],
    listed: Iterable[ActionSnapshot],
    *,
    first_run: bool,
    backfill_since: datetime | None = None,
    new_after: datetime | None = None,
) -> list[Change]:
    """Return the changes between ``previous`` and ``listed``, in listing order.

    A transition into DONE/FAILED emits. An action first seen already terminal emits
    if it was created after ``new_after`` (the window earlier polls covered; older
    unknown actions are history, e.g. pruned rows). On the first run (the baseline)
    only those finished after ``backfill_since`` emit, and none when it is None.
    """
    changes: list[Change] = []
    for snapshot in listed:
        before = previous.get(snapshot.id)
        if before is not None and before.same_state(snapshot):
            continue
        emits = _emits(snapshot, before, first_run=first_run, backfill_since=backfill_since, new_after=new_after)
        changes.append(Change(snapshot, before, emits))
    return changes


def _emits(
    now: ActionSnapshot,
    before: ActionSnapshot | None,
    *,
    first_run: bool,
    backfill_since: datetime | None,
    new_after: datetime | None,
) -> bool:
    if not now.terminal:
        return False
    if before is not None:
        return not before.terminal
    if first_run:
        return _finished_since(now, backfill_since)
    created = parse_timestamp(now.created_at)
    return new_after is None or created is None or created >= new_after


def _finished_since(snapshot: ActionSnapshot, since: datetime | None) -> bool:
    if since is None:
        return False
    finished = parse_timestamp(snapshot.updated_at) or parse_timestamp(snapshot.created_at)
    return finished is not None and finished >= since


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def find_stuck(
    current: Iterable[ActionSnapshot],
    *,
    now: datetime,
    stuck_after: timedelta | None,
    notified: Collection[str],
) -> list[tuple[ActionSnapshot, float]]:
    """Return the in-flight actions older than ``stuck_after`` not yet reported, with their age in seconds."""
    if not stuck_after:
        return []
    found: list[tuple[ActionSnapshot, float]] = []
    for snapshot in current:
        created = parse_timestamp(snapshot.created_at)
        if snapshot.terminal or snapshot.id in notified or created is None:
            continue
        age = now - created
        if age >= stuck_after:
            found.append((snapshot, age.total_seconds()))
    return found
