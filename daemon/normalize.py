"""PURE: turn any async action Voucherify returns into the one event shape.

Every documented type and any undocumented one go through the same code. The docs
disagree with themselves (``failed`` is an array in the examples and an object in
the schema for VOUCHERS.IMPORT and ORDERS.IMPORT; counts may be missing; one example
carries another type's body), so nothing here trusts a field's type: it reads what is
there, keeps the raw ``result`` as returned, and never raises on odd input.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from daemon.model import Event, EventType, event_id_for, format_timestamp, parse_timestamp

MAX_FAILURE_ROWS = 100
MAX_REASON_CHARS = 1000

KNOWN_TYPES = frozenset(
    {
        "CAMPAIGN.VOUCHERS_IMPORT",
        "CAMPAIGN.VOUCHERS_IMPORT_CSV",
        "CAMPAIGN.VOUCHERS_UPDATE",
        "CAMPAIGN.VOUCHERS_DELETE",
        "CAMPAIGN.VOUCHERS_GENERATE",
        "CAMPAIGNS.METADATA_KEY_PURGE",
        "CUSTOMERS.IMPORT_CSV",
        "CUSTOMERS.BULK_UPDATE",
        "CUSTOMERS.METADATA_UPDATE",
        "CUSTOMERS.METADATA_KEY_PURGE",
        "PRODUCTS.BULK_UPDATE",
        "PRODUCTS.METADATA_UPDATE",
        "PRODUCTS.METADATA_KEY_PURGE",
        "PRODUCTS.IMPORT_CSV",
        "SKUS.IMPORT_CSV",
        "VOUCHERS.IMPORT",
        "VOUCHERS.IMPORT_CSV",
        "VOUCHERS.BULK_UPDATE",
        "VOUCHERS.METADATA_UPDATE",
        "VOUCHERS.METADATA_KEY_PURGE",
        "ORDERS.IMPORT",
        "ORDERS.METADATA_KEY_PURGE",
    },
)


def normalize(action: Mapping[str, Any], *, detected_at: datetime, detail_available: bool = True) -> Event:
    """Build the completion event for a terminal action, whatever its shape."""
    data = describe(action, detail_available=detail_available)
    event_type = EventType.FAILED if data["outcome"] == "failure" else EventType.COMPLETED
    return build_event(data, event_type=event_type, detected_at=detected_at)


def stuck_event(action: Mapping[str, Any], *, detected_at: datetime, stuck_for_s: float) -> Event:
    """Build the ``async_action.stuck`` event for an action in flight for too long."""
    data = describe(action, detail_available=False) | {"outcome": "stuck", "stuck_for_s": round(stuck_for_s)}
    return Event(
        id=event_id_for(str(data["id"]), EventType.STUCK),
        type=EventType.STUCK,
        timestamp=format_timestamp(detected_at),
        data=data,
    )


def started_event(action: Mapping[str, Any], *, detected_at: datetime) -> Event:
    """Build the ``async_action.started`` event for an action first seen in flight (from its list entry: no extra request)."""
    data = describe(action, detail_available=False) | {"outcome": "started"}
    return Event(id=event_id_for(str(data["id"]), EventType.STARTED), type=EventType.STARTED, timestamp=format_timestamp(detected_at), data=data)


def test_event(*, detected_at: datetime, token: str) -> Event:
    """Build a clearly marked sample event (``relay.test``) for ``send-test``; ``token`` makes its id unique."""
    data = {
        "test": True,
        "message": "Test event from voucherify-relay send-test: nothing happened in Voucherify.",
        "id": "aa_test_" + token[:12],
        "type": "CUSTOMERS.IMPORT_CSV",
        "status": "DONE",
        "operation_status": None,
        "outcome": "partial",
        "done_count": 98,
        "failed_count": 2,
        "failures": [{"code": None, "source_id": "jane@example.com", "row": 7, "reason": "email: must be a valid email"}],
        "failures_omitted": 1,
        "created_at": format_timestamp(detected_at),
        "updated_at": format_timestamp(detected_at),
    }
    return Event(id=f"evt_test_{token}", type=EventType.TEST, timestamp=format_timestamp(detected_at), data=data)


def build_event(data: dict[str, Any], *, event_type: str, detected_at: datetime) -> Event:
    """Wrap ``data`` in the envelope; the timestamp is when the action last changed."""
    happened = parse_timestamp(data.get("updated_at")) or detected_at
    return Event(
        id=event_id_for(str(data["id"]), event_type),
        type=event_type,
        timestamp=format_timestamp(happened),
        data=data,
    )


def describe(action: Mapping[str, Any], *, detail_available: bool = True) -> dict[str, Any]:
    """Return the event ``data`` for ``action``: the documented fields, always present."""
    raw_result = action.get("result")
    result: Mapping[str, Any] = raw_result if isinstance(raw_result, Mapping) else {}
    failures, omitted = _failure_rows(result.get("failed"))
    done_count = _count(result.get("done_count"))
    failed_count = _count(result.get("failed_count"))
    if failed_count is None and failures:
        failed_count = len(failures) + omitted
    errors = _as_list(result.get("errors"))
    status = _upper(action.get("status"))
    operation_status = _upper(action.get("operation_status"))
    action_type = _text(action.get("type")) or "UNKNOWN"
    return {
        "id": _text(action.get("id")) or "",
        "type": action_type,
        "known_type": action_type in KNOWN_TYPES,
        "status": status,
        "operation_status": operation_status,
        "outcome": outcome_of(status, operation_status, done_count, failed_count, errors),
        "message": _text(result.get("message")),
        "done_count": done_count,
        "failed_count": failed_count,
        "failures": failures,
        "failures_omitted": omitted,
        "errors": errors,
        "reports": [r for r in _as_list(result.get("reports")) if isinstance(r, str)],
        "reports_available_till": _text(result.get("reports_available_till")),
        "progress": _count(action.get("progress")),
        "created_at": _text(action.get("created_at")),
        "updated_at": _text(action.get("updated_at")),
        "processing_time_ms": _count(action.get("processing_time")),
        "request_id": _text(action.get("request_id")),
        "detail_available": detail_available,
        "result": raw_result,
    }


def outcome_of(
    status: str | None,
    operation_status: str | None,
    done_count: int | None,
    failed_count: int | None,
    errors: list[Any],
) -> str:
    """Classify a terminal action as ``failure``, ``partial`` or ``success``."""
    if status == "FAILED" or operation_status == "FAILED" or (done_count == 0 and (failed_count or 0) > 0):
        return "failure"
    if status == "DONE" and (done_count or 0) > 0 and ((failed_count or 0) > 0 or errors):
        return "partial"
    return "success"


def _failure_rows(failed: object) -> tuple[list[dict[str, Any]], int]:
    if isinstance(failed, Mapping):
        failed = [failed]
    if not isinstance(failed, list):
        return [], 0
    rows = [_failure_row(item) for item in failed[:MAX_FAILURE_ROWS]]
    return rows, max(0, len(failed) - MAX_FAILURE_ROWS)


def _failure_row(item: object) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        return {"code": None, "source_id": None, "row": None, "reason": _clip(_text(item))}
    return {
        "code": _text(item.get("code")),
        "source_id": _text(item.get("source_id")),
        "row": _count(item.get("row")),
        "reason": _clip(_text(item.get("reason"))),
    }


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    return repr(value)


def _upper(value: object) -> str | None:
    text = _text(value)
    return text.upper() if text else None


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_REASON_CHARS:
        return text
    return text[: MAX_REASON_CHARS - 1] + "…"
