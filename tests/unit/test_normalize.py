"""Normalization: every documented type, and anything else, into one event shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.model import event_id_for
from daemon.normalize import MAX_FAILURE_ROWS, describe, normalize, outcome_of

EXAMPLES = json.loads((Path(__file__).parents[2] / "daemon" / "demo" / "voucherify_examples.json").read_text())
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
REQUIRED = {
    "id",
    "type",
    "status",
    "operation_status",
    "outcome",
    "message",
    "done_count",
    "failed_count",
    "failures",
    "errors",
    "reports",
    "reports_available_till",
    "created_at",
    "updated_at",
    "processing_time_ms",
    "request_id",
    "result",
}

# documented example key -> (type in its body, outcome, done, failed, failure rows, reports)
EXPECTED = {
    "CAMPAIGN.VOUCHERS_IMPORT": ("CAMPAIGN.VOUCHERS_IMPORT", "failure", 0, 3, 3, 0),
    # the docs' quirk: this example carries a CUSTOMERS.IMPORT_CSV body; the body's own type wins
    "CAMPAIGN.VOUCHERS_IMPORT_CSV": ("CUSTOMERS.IMPORT_CSV", "failure", 0, 2, 2, 0),
    "CAMPAIGN.VOUCHERS_DELETE": ("CAMPAIGN.VOUCHERS_DELETE", "success", 2, None, 0, 0),
    "CAMPAIGN.VOUCHERS_UPDATE": ("CAMPAIGN.VOUCHERS_UPDATE", "success", 1, None, 0, 0),
    "CAMPAIGN.VOUCHERS_GENERATE": ("CAMPAIGN.VOUCHERS_GENERATE", "success", 2, None, 0, 0),
    "CAMPAIGNS.METADATA_KEY_PURGE": ("CAMPAIGNS.METADATA_KEY_PURGE", "success", 0, None, 0, 0),
    "CUSTOMERS.IMPORT_CSV": ("CUSTOMERS.IMPORT_CSV", "failure", 0, 2, 2, 0),
    "CUSTOMERS.BULK_UPDATE": ("CUSTOMERS.BULK_UPDATE", "success", 3, 0, 0, 1),
    "CUSTOMERS.METADATA_UPDATE": ("CUSTOMERS.METADATA_UPDATE", "success", 3, 0, 0, 1),
    "CUSTOMERS.METADATA_KEY_PURGE": ("CUSTOMERS.METADATA_KEY_PURGE", "success", 0, None, 0, 0),
    "PRODUCTS.BULK_UPDATE": ("PRODUCTS.BULK_UPDATE", "success", 3, 0, 0, 1),
    "PRODUCTS.METADATA_UPDATE": ("PRODUCTS.METADATA_UPDATE", "success", 3, 0, 0, 1),
    "PRODUCTS.METADATA_KEY_PURGE": ("PRODUCTS.METADATA_KEY_PURGE", "success", 2, None, 0, 0),
    "VOUCHERS.IMPORT": ("VOUCHERS.IMPORT", "failure", 0, 3, 3, 0),
    "VOUCHERS.IMPORT_CSV": ("VOUCHERS.IMPORT_CSV", "failure", 0, 2, 2, 0),
    "VOUCHERS.BULK_UPDATE": ("VOUCHERS.BULK_UPDATE", "success", 3, 0, 0, 1),
    "VOUCHERS.METADATA_UPDATE": ("VOUCHERS.METADATA_UPDATE", "success", 3, 0, 0, 1),
    "VOUCHERS.METADATA_KEY_PURGE": ("VOUCHERS.METADATA_KEY_PURGE", "success", 9, None, 0, 0),
    "SKUS.IMPORT_CSV": ("SKUS.IMPORT_CSV", "success", 4, 0, 0, 0),
    "PRODUCTS.IMPORT_CSV": ("PRODUCTS.IMPORT_CSV", "partial", 1, 1, 1, 0),
    "ORDERS.METADATA_KEY_PURGE": ("ORDERS.METADATA_KEY_PURGE", "success", 1, None, 0, 0),
    "ORDERS.IMPORT": ("ORDERS.IMPORT", "partial", 1, 1, 1, 0),
}


def test_every_documented_type_has_an_expectation():
    """The table below covers all 22 documented examples."""
    assert set(EXPECTED) == set(EXAMPLES)
    assert len(EXAMPLES) == 22


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_documented_examples(key):
    """Each documented example normalizes to the expected outcome, counts and rows."""
    body_type, outcome, done, failed, rows, reports = EXPECTED[key]
    event = normalize(EXAMPLES[key], detected_at=NOW)
    data = event.data
    assert set(data) >= REQUIRED
    assert (data["type"], data["outcome"], data["done_count"], data["failed_count"]) == (body_type, outcome, done, failed)
    assert (len(data["failures"]), len(data["reports"])) == (rows, reports)
    assert data["result"] == EXAMPLES[key]["result"]
    assert event.type == ("async_action.failed" if outcome == "failure" else "async_action.completed")
    assert event.id == event_id_for(data["id"], event.type)
    assert event.timestamp == EXAMPLES[key]["updated_at"]


def test_failure_rows_keep_code_source_id_row_and_reason():
    """Rows carry what identifies the failed record, whichever of the keys the type uses."""
    rows = normalize(EXAMPLES["CUSTOMERS.IMPORT_CSV"], detected_at=NOW).data["failures"]
    assert rows[0] == {"code": None, "source_id": "test-user@voucherify.io", "row": 1, "reason": rows[0]["reason"]}
    orders = normalize(EXAMPLES["ORDERS.IMPORT"], detected_at=NOW).data["failures"]
    assert orders == [{"code": None, "source_id": None, "row": None, "reason": "Internal error"}]


@pytest.mark.parametrize(
    ("failed", "rows"),
    [
        ({"code": "A", "reason": "bad"}, 1),  # the schema's object form (VOUCHERS.IMPORT, ORDERS.IMPORT)
        ([{"code": "A"}, "plain string", 7, None], 4),
        (None, 0),
        ("unexpected", 0),
        ([], 0),
    ],
)
def test_failed_as_array_object_or_null(failed, rows):
    """``failed`` may be an array, an object, null or nonsense; none of them raise."""
    data = describe({"id": "aa_1", "status": "DONE", "result": {"failed": failed}})
    assert len(data["failures"]) == rows


def test_failure_rows_are_capped_with_a_count_of_the_rest():
    """Huge failure lists are capped; the number left out is reported."""
    failed = [{"row": i, "reason": "x" * 5000} for i in range(5000)]
    data = describe({"id": "aa_1", "status": "DONE", "result": {"failed": failed, "done_count": 0, "failed_count": 5000}})
    assert len(data["failures"]) == MAX_FAILURE_ROWS
    assert data["failures_omitted"] == 5000 - MAX_FAILURE_ROWS
    assert len(data["failures"][0]["reason"]) <= 1000


def test_missing_failed_count_is_derived_from_the_rows():
    """Without failed_count, the number of failure rows stands in."""
    data = describe({"id": "aa_1", "status": "DONE", "result": {"failed": [{"row": 1}, {"row": 2}], "done_count": 5}})
    assert data["failed_count"] == 2
    assert data["outcome"] == "partial"


@pytest.mark.parametrize(
    ("status", "operation_status", "done", "failed", "errors", "outcome"),
    [
        ("FAILED", None, None, None, [], "failure"),
        ("DONE", "FAILED", 3, 0, [], "failure"),
        ("DONE", None, 0, 2, [], "failure"),
        ("DONE", None, 2, 1, [], "partial"),
        ("DONE", "SUCCESS", 2, 0, [{"message": "x"}], "partial"),
        ("DONE", None, 0, 0, [], "success"),
        ("DONE", None, None, None, [], "success"),
        ("DONE", "UNKNOWN", 5, None, [], "success"),
    ],
)
def test_outcome_rules(status, operation_status, done, failed, errors, outcome):  # noqa: PLR0917 - one parameter per table column
    """The documented outcome rules, one row each."""
    assert outcome_of(status, operation_status, done, failed, errors) == outcome


def test_unknown_types_and_extra_fields_are_forwarded():
    """A type the docs do not list (a loyalty batch job) keeps its type and raw result."""
    action = {"id": "aa_9", "type": "LOYALTY.BATCH_JOB", "status": "DONE", "result": {"points": 10, "weird": [1, 2]}, "new_field": True}
    data = normalize(action, detected_at=NOW).data
    assert (data["type"], data["known_type"], data["result"]) == ("LOYALTY.BATCH_JOB", False, action["result"])


def test_a_bare_list_entry_still_makes_an_event():
    """Without the detail (404), the event says so and carries what the list showed."""
    event = normalize({"id": "aa_2", "type": "ORDERS.IMPORT", "status": "DONE"}, detected_at=NOW, detail_available=False)
    assert event.data["detail_available"] is False
    assert event.data["result"] is None
    assert event.timestamp == "2026-11-23T12:00:00.000Z"


def test_event_ids_are_deterministic_and_distinct_per_type():
    """The same (action, event type) always gives the same id; another type another id."""
    assert event_id_for("aa_1", "async_action.completed") == event_id_for("aa_1", "async_action.completed")
    assert event_id_for("aa_1", "async_action.completed") != event_id_for("aa_1", "async_action.failed")
    assert event_id_for("aa_1", "async_action.completed") != event_id_for("aa_2", "async_action.completed")


def test_body_bytes_are_stable():
    """Normalizing the same action twice gives byte-identical bodies (what is signed is what is sent)."""
    first = normalize(EXAMPLES["ORDERS.IMPORT"], detected_at=NOW).body()
    second = normalize(EXAMPLES["ORDERS.IMPORT"], detected_at=datetime(2030, 1, 1, tzinfo=UTC)).body()
    assert first == second
