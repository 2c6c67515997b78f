"""The pure change detector: which list entries are transitions, and which emit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.detect import diff, snapshot_from
from daemon.model import ActionSnapshot

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def snap(
    status: str,
    *,
    id: str = "aa_1",  # noqa: A002 - the field's own name
    progress: int | None = None,
    created: str = "2026-11-23T11:59:00.000Z",
    updated: str | None = None,
) -> ActionSnapshot:
    """Return a list snapshot of one customers import."""
    return ActionSnapshot(
        id=id, type="CUSTOMERS.IMPORT_CSV", status=status, operation_status=None, progress=progress, created_at=created, updated_at=updated or created
    )


@pytest.mark.parametrize(
    ("before", "after", "emits"),
    [
        (snap("ENQUEUED"), snap("IN_PROGRESS", progress=10), False),
        (snap("IN_PROGRESS", progress=10), snap("IN_PROGRESS", progress=50), False),
        (snap("IN_PROGRESS"), snap("DONE", progress=100), True),
        (snap("ENQUEUED"), snap("FAILED"), True),
        (snap("DONE"), snap("DONE", updated="2026-11-23T11:59:30.000Z"), False),
        (snap("DONE"), snap("FAILED", updated="2026-11-23T11:59:30.000Z"), False),
        (None, snap("ENQUEUED"), False),
        (None, snap("DONE"), True),
        (None, snap("FAILED"), True),
    ],
)
def test_transitions_after_the_baseline(before, after, emits):
    """Only a move into DONE/FAILED, or a new action first seen finished, emits."""
    previous = {} if before is None else {before.id: before}
    [change] = diff(previous, [after], first_run=False, new_after=NOW - timedelta(minutes=10))
    assert change.emits is emits
    assert change.snapshot == after


def test_unchanged_entries_are_not_changes():
    """An entry identical to the stored one yields nothing, so nothing is re-fetched."""
    entry = snap("IN_PROGRESS", progress=40)
    assert diff({entry.id: entry}, [entry], first_run=False) == []


@pytest.mark.parametrize(
    ("backfill_since", "updated", "emits"),
    [
        (None, "2026-11-23T11:59:00.000Z", False),
        (NOW - timedelta(hours=1), "2026-11-23T11:30:00.000Z", True),
        (NOW - timedelta(hours=1), "2026-11-23T10:30:00.000Z", False),
    ],
)
def test_first_run_baseline_and_backfill(backfill_since, updated, emits):
    """On the first run finished actions emit only inside the backfill window."""
    [change] = diff({}, [snap("DONE", updated=updated)], first_run=True, backfill_since=backfill_since)
    assert change.emits is emits


def test_first_run_tracks_in_flight_actions_without_emitting():
    """An action in flight at the first start is stored so its completion emits later."""
    [change] = diff({}, [snap("IN_PROGRESS")], first_run=True, backfill_since=None)
    assert change.emits is False
    [later] = diff({change.snapshot.id: change.snapshot}, [snap("DONE")], first_run=False)
    assert later.emits is True


def test_unknown_old_terminal_actions_are_history():
    """A finished action created before the covered window (e.g. pruned) does not emit."""
    old = snap("DONE", created="2026-11-20T00:00:00.000Z")
    [change] = diff({}, [old], first_run=False, new_after=NOW - timedelta(minutes=10))
    assert change.emits is False


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "aa_1", "type": "X.Y", "status": "done", "progress": 100}, ("aa_1", "X.Y", "DONE", 100)),
        ({"id": "aa_2", "status": None, "progress": "50"}, ("aa_2", "UNKNOWN", "UNKNOWN", None)),
        ({"id": "aa_3", "status": "DONE", "progress": True}, ("aa_3", "UNKNOWN", "DONE", None)),
    ],
)
def test_snapshot_tolerates_odd_entries(item, expected):
    """Missing, null and wrong-typed fields become neutral values, never errors."""
    s = snapshot_from(item)
    assert s is not None
    assert (s.id, s.type, s.status, s.progress) == expected


@pytest.mark.parametrize("item", [{}, {"id": None}, {"id": 7}, {"id": ""}])
def test_snapshot_requires_an_id(item):
    """An entry without a usable id cannot be tracked and is dropped."""
    assert snapshot_from(item) is None
