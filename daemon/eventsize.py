"""PURE: keep every event body within RELAY_MAX_EVENT_BYTES.

An event that fits is returned unchanged. One that does not is cut in this order
until it fits: the raw ``result`` copy is dropped, long strings are clipped, the
``errors`` and ``reports`` lists are shortened, failure rows are dropped from the end
(``failures_omitted`` counts them too), and as a last resort only the documented
scalar fields are kept, clipped. A cut event says so: ``truncated: true``,
``truncated_rows`` (failure rows the cap removed) and ``truncated_fields``.

Sizes are measured by walking the value without serializing it, and the walk stops
as soon as the budget is spent, so a million-row result costs what the cap costs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from daemon.model import Event

MIN_EVENT_BYTES = 16 * 1024
MAX_DEPTH = 100  # deeper values are dropped: json.dumps would come close to the recursion limit
FIELD_CHARS = 1000
MIN_FIELD_CHARS = 120
MARKS = frozenset({"truncated", "truncated_rows", "truncated_fields"})
ESSENTIAL = (
    "id",
    "type",
    "known_type",
    "status",
    "operation_status",
    "outcome",
    "message",
    "done_count",
    "failed_count",
    "failures_omitted",
    "progress",
    "created_at",
    "updated_at",
    "processing_time_ms",
    "request_id",
    "detail_available",
    "detail_error",
    "reports_available_till",
    "stuck_for_s",
    "test",
)


def fit_event(event: Event, *, max_bytes: int) -> Event:
    """Return ``event`` if its body fits in ``max_bytes``, else a copy cut to fit and marked ``truncated``."""
    if json_size(event.envelope(), limit=max_bytes) is not None:
        return event
    data = dict(event.data)
    if data.get("result") is not None:
        data = _mark(data, "result") | {"result": None}
    for shrink in (_clip_strings, _shorten_lists, _drop_rows):
        if _fits(event, data, max_bytes):
            break
        data = shrink(data, max_bytes)
    if not _fits(event, data, max_bytes):
        data = _essentials(data)
    return Event(id=event.id, type=event.type, timestamp=event.timestamp, data=data)


def json_size(value: object, *, limit: int) -> int | None:
    """Return the compact UTF-8 JSON size of ``value``, or None once it exceeds ``limit`` or MAX_DEPTH."""
    total = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return None
        if isinstance(item, (Mapping, list, tuple)) and len(item) > limit:
            return None  # every member costs at least a byte: no need to look inside
        if isinstance(item, Mapping):
            total += 1 + 2 * len(item) if item else 2  # braces, colons and commas
            stack.extend((k if isinstance(k, str) else str(k), depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            total += 1 + max(1, len(item))  # brackets and commas
            stack.extend((v, depth + 1) for v in item)
        else:
            total += _scalar_size(item)
        if total > limit:
            return None
    return total


def _scalar_size(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return len(value) + 2
    return len(json.dumps(value, ensure_ascii=False).encode())


def _fits(event: Event, data: dict[str, Any], max_bytes: int) -> bool:
    envelope = {"type": event.type, "timestamp": event.timestamp, "data": data}
    return json_size(envelope, limit=max_bytes) is not None


def _mark(data: dict[str, Any], field: str) -> dict[str, Any]:
    fields = list(dict.fromkeys([*data.get("truncated_fields", []), field]))
    return data | {"truncated": True, "truncated_rows": data.get("truncated_rows", 0), "truncated_fields": fields}


def _clip_strings(data: dict[str, Any], _max_bytes: int) -> dict[str, Any]:
    long = [k for k, v in data.items() if isinstance(v, str) and len(v) > FIELD_CHARS]
    for key in long:
        data = _mark(data, key) | {key: clip_text(data[key], FIELD_CHARS)}
    return data


def _shorten_lists(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    share = max_bytes // 8  # errors and reports each get an eighth; failure rows get what remains
    for key in ("errors", "reports"):
        items = data.get(key)
        if isinstance(items, list) and json_size(items, limit=share) is None:
            clipped = [clip_text(i, FIELD_CHARS) if isinstance(i, str) else i for i in items[:share]]
            data = _mark(data, key) | {key: _prefix_within(clipped, share)}
    return data


def _drop_rows(data: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    rows = data.get("failures")
    if not isinstance(rows, list) or not rows:
        return data
    rest = json_size(data | {"failures": []}, limit=max_bytes)
    kept = _prefix_within(rows, max_bytes - (rest or max_bytes) - 256)  # 256: room for the counters growing
    cut = len(rows) - len(kept)
    omitted = int(data.get("failures_omitted") or 0) + cut
    return _mark(data, "failures") | {"failures": kept, "failures_omitted": omitted, "truncated_rows": cut}


def _prefix_within(items: list[Any], budget: int) -> list[Any]:
    kept: list[Any] = []
    used = 2
    for item in items:
        size = json_size(item, limit=budget - used)
        if size is None:
            break
        used += size + 1
        kept.append(item)
    return kept


def _essentials(data: dict[str, Any]) -> dict[str, Any]:
    """Keep only the documented scalar fields, each clipped hard: always far below MIN_EVENT_BYTES."""
    rows = data.get("failures")
    dropped = len(rows) if isinstance(rows, list) else 0
    kept = {k: _small(data.get(k)) for k in ESSENTIAL if k in data}
    omitted = data.get("failures_omitted")
    return kept | {
        "failures": [],
        "failures_omitted": (omitted if isinstance(omitted, int) else 0) + dropped,
        "truncated": True,
        "truncated_rows": int(data.get("truncated_rows") or 0) + dropped,
        "truncated_fields": sorted({*data.get("truncated_fields", ()), *(k for k in data if k not in kept)} - MARKS),
    }


def _small(value: object) -> object:
    if isinstance(value, str):
        return clip_text(value, MIN_FIELD_CHARS)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return None


def clip_text(text: str, max_chars: int) -> str:
    """Return ``text`` if short enough, else its prefix and how much was cut: ``…(+N chars)``."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…(+{len(text) - max_chars} chars)"
