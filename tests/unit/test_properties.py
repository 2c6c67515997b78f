"""Bad input: detection, normalization and Slack rendering never raise on any JSON the API could return.

Hypothesis generates list entries and full actions with any type string, any mix of
missing, null and wrong-typed fields, and failure lists up to thousands of rows.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.detect import diff, snapshot_from
from daemon.model import ActionSnapshot, EventType, event_id_for
from daemon.normalize import MAX_FAILURE_ROWS, describe, normalize
from daemon.slack_blocks import render_message, validate_message

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "50"))  # per property; docs/reliability.md has a longer run
PROFILE = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DATA_KEYS = {
    "id", "type", "known_type", "status", "operation_status", "outcome", "message", "done_count", "failed_count",
    "failures", "failures_omitted", "errors", "reports", "reports_available_till", "progress", "created_at",
    "updated_at", "processing_time_ms", "request_id", "detail_available", "result",
}  # fmt: skip

# JSON as json.loads returns it: finite floats only (NaN and Infinity are not JSON).
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=6)
# Naive bounds: hypothesis draws naive datetimes from them, formatted the way Voucherify does.
YEAR_2000, YEAR_2100 = datetime(2000, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001
timestamps = st.datetimes(min_value=YEAR_2000, max_value=YEAR_2100).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
statuses = st.sampled_from(["ENQUEUED", "IN_PROGRESS", "DONE", "FAILED", "done", "failed", "", "CANCELLED"]) | st.text(max_size=12)
types = st.sampled_from(["CUSTOMERS.IMPORT_CSV", "VOUCHERS.IMPORT", "ORDERS.IMPORT", "SOMETHING.NEW"]) | st.text(max_size=30)
failure_rows = st.fixed_dictionaries(
    {},
    optional={"code": json_values, "source_id": json_values, "row": json_values, "reason": st.text(max_size=3000) | json_values},
)
huge_failures = st.integers(min_value=0, max_value=5000).map(lambda n: [{"row": i, "reason": f"row {i}: bad & <odd>"} for i in range(n)])
failed_fields = st.lists(failure_rows | json_values, max_size=6) | huge_failures | failure_rows | json_values
results = st.fixed_dictionaries(
    {},
    optional={
        "failed": failed_fields,
        "done_count": json_values | st.integers(0, 10**9),
        "failed_count": json_values | st.integers(0, 10**9),
        "message": st.text(max_size=5000) | json_values,
        "errors": st.lists(json_values, max_size=8) | json_values,
        "reports": st.lists(st.text(max_size=300) | json_values, max_size=8) | json_values,
        "reports_available_till": timestamps | json_values,
    },
)
actions = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(min_size=1, max_size=30) | json_values,
        "type": types | json_values,
        "status": statuses | json_values,
        "operation_status": statuses | json_values,
        "progress": st.integers(-5, 200) | json_values,
        "created_at": timestamps | json_values,
        "updated_at": timestamps | json_values,
        "processing_time": st.integers(0, 10**8) | json_values,
        "request_id": st.text(max_size=30) | json_values,
        "result": results | json_values,
    },
).flatmap(lambda fixed: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda extra: {**extra, **fixed}))
actions_with_id = st.tuples(st.text(min_size=1, max_size=20), actions).map(lambda pair: {**pair[1], "id": pair[0]})
# Snapshots for diff: few ids and few values, so the same action often appears before and after.
snapshots = st.builds(
    ActionSnapshot,
    id=st.sampled_from(["aa_1", "aa_2", "aa_3", "aa_4"]),
    type=types,
    status=st.sampled_from(["ENQUEUED", "IN_PROGRESS", "DONE", "FAILED", "UNKNOWN", "5"]),
    operation_status=st.none() | st.sampled_from(["DONE", "FAILED"]),
    progress=st.none() | st.integers(0, 100),
    created_at=st.none() | timestamps | st.text(max_size=10),
    updated_at=st.none() | st.sampled_from(["2026-11-23T11:59:00.000Z", "2026-11-23T11:59:30.000Z", "garbage"]),
)


@PROFILE
@given(item=actions)
def test_snapshot_from_never_raises(item):
    """Any list entry becomes a snapshot with string fields, or None exactly when it has no usable id."""
    snapshot = snapshot_from(item)
    usable = isinstance(item.get("id"), str) and item["id"] != ""
    assert (snapshot is not None) is usable
    if snapshot is not None:
        assert isinstance(snapshot.status, str)
        assert snapshot.status == snapshot.status.upper()
        assert snapshot.progress is None or isinstance(snapshot.progress, int)


@PROFILE
@given(
    before=st.lists(snapshots, max_size=6), listed=st.lists(snapshots, max_size=6, unique_by=lambda s: s.id), first_run=st.booleans(), backfill=st.booleans()
)
def test_diff_never_raises_and_emits_only_terminal_changes(before, listed, first_run, backfill):
    """Any stored and listed snapshots diff without raising; only changed entries appear, and only terminal ones emit."""
    previous = {s.id: s for s in before}
    changes = diff(previous, listed, first_run=first_run, backfill_since=NOW - timedelta(hours=1) if backfill else None, new_after=NOW - timedelta(minutes=10))
    for change in changes:
        assert change.snapshot in listed
        assert change.previous is None or not change.previous.same_state(change.snapshot)
        if change.emits:
            assert change.snapshot.terminal
            assert change.previous is None or not change.previous.terminal
    unchanged = [s for s in listed if s.id in previous and previous[s.id].same_state(s)]
    assert not {c.snapshot for c in changes} & set(unchanged)


@PROFILE
@given(action=actions, detail_available=st.booleans())
def test_describe_always_has_the_documented_shape(action, detail_available):
    """Any action, however malformed, describes to every documented field with the documented types."""
    data = describe(action, detail_available=detail_available)
    assert set(data) == DATA_KEYS
    assert isinstance(data["id"], str)
    assert isinstance(data["type"], str)
    assert data["outcome"] in {"failure", "partial", "success"}
    assert len(data["failures"]) <= MAX_FAILURE_ROWS
    assert all(set(row) == {"code", "source_id", "row", "reason"} for row in data["failures"])
    assert all(row["reason"] is None or len(row["reason"]) <= 1000 for row in data["failures"])
    for key in ("done_count", "failed_count", "progress", "processing_time_ms"):
        assert data[key] is None or (isinstance(data[key], int) and not isinstance(data[key], bool))
    assert data["failures_omitted"] >= 0
    assert all(isinstance(r, str) for r in data["reports"])
    assert data["detail_available"] is detail_available


@PROFILE
@given(action=actions_with_id)
def test_normalize_builds_a_stable_serializable_event(action):
    """Any action normalizes into an event whose id depends only on (action id, type) and whose body is valid JSON."""
    event = normalize(action, detected_at=NOW)
    again = normalize(action, detected_at=NOW + timedelta(hours=1))
    assert event.type in {EventType.COMPLETED, EventType.FAILED}
    assert event.id == again.id == event_id_for(event.data["id"], event.type)
    assert (event.type == EventType.FAILED) is (event.data["outcome"] == "failure")
    decoded = json.loads(event.body())
    assert decoded["type"] == event.type
    assert decoded["data"]["id"] == event.data["id"]


@PROFILE
@given(size=st.integers(min_value=MAX_FAILURE_ROWS, max_value=20_000))
def test_huge_failure_lists_are_capped_and_counted(size):
    """A failure list of any length keeps at most 100 rows and counts the rest as omitted."""
    failed = [{"code": "bad", "row": i, "reason": "x" * 50} for i in range(size)]
    data = describe({"id": "aa_1", "status": "DONE", "result": {"failed": failed, "done_count": 1}})
    assert len(data["failures"]) == MAX_FAILURE_ROWS
    assert data["failures_omitted"] == size - MAX_FAILURE_ROWS
    assert data["failed_count"] == size
    assert data["outcome"] == "partial"


@PROFILE
@given(action=actions_with_id)
def test_any_normalized_event_renders_a_valid_slack_message(action):
    """Whatever Voucherify returned, the Slack message built from its event passes every Slack limit check."""
    envelope = json.loads(normalize(action, detected_at=NOW).body())
    message = render_message(envelope)
    assert validate_message(message) == []
    assert message["blocks"][0]["type"] == "header"


@PROFILE
@given(envelope=json_values | st.dictionaries(st.sampled_from(["type", "timestamp", "data"]), json_values | actions))
def test_any_envelope_renders_without_raising(envelope):
    """Even an envelope that is not one of ours renders to a message Slack accepts, never an exception."""
    message: dict[str, Any] = render_message(envelope)
    assert validate_message(message) == []
