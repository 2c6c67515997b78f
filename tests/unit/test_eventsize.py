"""The event size cap: whatever Voucherify returns, the body stays within RELAY_MAX_EVENT_BYTES and says what was cut."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.eventsize import MIN_EVENT_BYTES, fit_event, json_size
from daemon.normalize import normalize

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CAP = 262_144


def action(result: object = None, **fields: object) -> dict[str, Any]:
    """Return a finished VOUCHERS.IMPORT action with ``result``."""
    return {"id": "aa_1", "type": "VOUCHERS.IMPORT", "status": "DONE", "result": result, "request_id": "v-1", **fields}


def nested(depth: int) -> dict[str, Any]:
    """Return a dict nested ``depth`` levels deep."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


ROWS = [{"code": f"C{i}", "row": i, "reason": "duplicate code"} for i in range(1_000_000)]
HOSTILE = {
    "1,000,000 failed rows": action({"failed": ROWS, "done_count": 0, "failed_count": 1_000_000}),
    "a 50 MB detail": action({"done_count": 1, "blob": "x" * 50_000_000}),
    "a 5 MB reason": action({"failed": [{"code": "c", "reason": "r" * 5_000_000}], "done_count": 1, "failed_count": 1}),
    "a 5 MB message": action({"message": "m" * 5_000_000}),
    "deeply nested result": action(nested(900)),
    "a 5 MB error": action({"errors": ["e" * 5_000_000], "done_count": 1}),
    "100 rows of 1,000-char reasons": action({"failed": [{"reason": "\x00" * 2000}] * 100, "failed_count": 100, "done_count": 1}),
}


@pytest.mark.parametrize("cap", [MIN_EVENT_BYTES, CAP])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_results_fit_the_cap_and_keep_what_receivers_need(name: str, cap: int) -> None:
    """Huge or deep results give a body within the cap, with the counts, ids and outcome intact and marked truncated."""
    whole = normalize(HOSTILE[name], detected_at=NOW)
    fitted = fit_event(whole, max_bytes=cap)
    body = fitted.body()
    assert len(body) <= cap
    data = json.loads(body)["data"]
    assert data["truncated"] is True
    assert data["truncated_fields"]
    for key in ("id", "type", "status", "outcome", "done_count", "failed_count", "request_id", "updated_at"):
        assert data[key] == whole.data[key]
    assert fitted.id == whole.id
    assert data["failures_omitted"] == whole.data["failures_omitted"] + data["truncated_rows"]


def test_million_rows_keep_the_first_rows_and_count_the_rest() -> None:
    """A 1,000,000-row result keeps its first failure rows and says how many it left out."""
    fitted = fit_event(normalize(HOSTILE["1,000,000 failed rows"], detected_at=NOW), max_bytes=CAP)
    assert [r["row"] for r in fitted.data["failures"]] == list(range(100))
    assert fitted.data["failures_omitted"] == 999_900
    assert fitted.data["failed_count"] == 1_000_000
    assert fitted.data["result"] is None


def test_rows_are_dropped_from_the_end_when_they_alone_exceed_the_cap() -> None:
    """When the kept rows themselves are too big, the last ones go and ``truncated_rows`` counts them."""
    fitted = fit_event(normalize(HOSTILE["100 rows of 1,000-char reasons"], detected_at=NOW), max_bytes=MIN_EVENT_BYTES)
    kept = len(fitted.data["failures"])
    assert 0 < kept < 100
    assert fitted.data["truncated_rows"] == 100 - kept
    assert "failures" in fitted.data["truncated_fields"]


def test_an_event_that_fits_is_returned_unchanged() -> None:
    """A normal event is not touched: no truncated marker, the raw result still there."""
    whole = normalize(action({"done_count": 3, "failed": [{"code": "x", "reason": "bad"}]}), detected_at=NOW)
    assert fit_event(whole, max_bytes=CAP) is whole
    assert "truncated" not in whole.data


KEYS = st.sampled_from(["id", "type", "status", "result", "message", "request_id", "x"])
LONG_TEXT = st.builds(str.__mul__, st.sampled_from(["a", "\x00", '"', "é"]), st.integers(1000, 20000))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50) | LONG_TEXT,
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=20), inner, max_size=20),
    max_leaves=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(detail=st.dictionaries(KEYS, JSON), cap=st.integers(MIN_EVENT_BYTES, 64_000))
def test_any_detail_fits_any_cap(detail: dict[str, Any], cap: int) -> None:
    """Whatever shape the detail has, the capped body is valid JSON no larger than the cap."""
    fitted = fit_event(normalize(detail, detected_at=NOW), max_bytes=cap)
    body = fitted.body()
    assert len(body) <= cap
    assert json.loads(body)["data"]["outcome"] in {"success", "partial", "failure"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=JSON)
def test_measured_size_is_the_serialized_size(value: object) -> None:
    """``json_size`` agrees with the bytes json.dumps produces for the event body."""
    exact = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    assert json_size(value, limit=10**9) == exact
