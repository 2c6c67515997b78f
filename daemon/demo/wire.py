"""Voucherify's async-actions wire format, as the stand-in answers it: paths, timestamps, bodies, errors.

Shapes follow the API reference (/work/shared/voucherify/): compact JSON, keys in the
documented order, millisecond UTC timestamps, error bodies like the openapi ``Error`` object.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import secrets
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from aiohttp import web

Json = dict[str, Any]

EXAMPLES_PATH: Final = Path(__file__).with_name("voucherify_examples.json")
LIST_PATH: Final = "/v1/async-actions"
DEFAULT_LIMIT: Final = 10  # the openapi documents 1..100 but no default
MS: Final = timedelta(milliseconds=1)
# fmt: off
_KEY_ORDER: Final = ("id", "type", "status", "operation_status", "result", "created_at",
                     "updated_at", "request_id", "progress", "processing_time", "object")
# fmt: on
_LIST_KEYS: Final = frozenset(_KEY_ORDER) - {"result"}
CANNED: Final = {
    401: ("unauthorized", "Unauthorized", "Invalid or missing X-App-Id / X-App-Token headers"),
    403: ("forbidden", "Forbidden", "The API key is not allowed to access this resource"),
    500: (None, "Internal Server Error", "An internal API error occurred"),
}
_GATEWAY_HTML: Final = "<html><body><h1>{status} {reason}</h1></body></html>"  # proxies answer HTML


def classify_path(path: str) -> str:
    """Name the endpoint a request path hits: "list", "get" or "other"."""
    if path.rstrip("/") == LIST_PATH:
        return "list"
    rest = path.removeprefix(LIST_PATH + "/")
    return "get" if rest != path and rest and "/" not in rest else "other"


def as_utc(moment: datetime) -> datetime:
    """Return moment in UTC; naive means UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def to_utc_ms(moment: datetime) -> datetime:
    """Return moment in UTC truncated to whole milliseconds."""
    utc = as_utc(moment)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def format_ts(moment: datetime) -> str:
    """Serialize like Voucherify: `2023-01-20T07:41:33.086Z`."""
    utc = to_utc_ms(moment)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def parse_end_date(raw: str) -> datetime:
    """Parse `2016-11-16T14:14:31Z` (milliseconds optional) or `2016-11-16`; raise ValueError."""
    parsed = None
    if "T" in raw or len(raw) == len("2016-11-16"):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(raw)
    if parsed is None:
        details = "Property .end_date cannot be recognized as a ISO-8601 compliant date"
        raise ValueError(details)
    return as_utc(parsed)


def parse_limit(raw: str | None) -> int:
    """Parse the `limit` query parameter (1..100); raise ValueError with the details text."""
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= 100:  # noqa: PLR2004 - documented bounds
        details = "Property .limit must be an integer between 1 and 100"
        raise ValueError(details)
    return int(raw)


def new_request_id() -> str:
    """Return a Voucherify-style request id, "v-" + 18 hex chars."""
    return "v-" + secrets.token_hex(9)


def error_body(code: int, message: str, details: str, *, key: str | None = None, **more: str) -> Json:
    """Build an error body shaped like errors.mdx and the openapi `Error` object."""
    head: Json = {"code": code} | ({"key": key} if key else {})
    return head | {"message": message, "details": details, "request_id": new_request_id()} | more


def json_response(body: Json, *, status: int = 200) -> web.Response:
    """Answer compact JSON like Voucherify does."""
    return web.json_response(body, status=status, dumps=functools.partial(json.dumps, separators=(",", ":")))


def list_item(action: Json) -> Json:
    """Drop what the list endpoint never shows (result, extra fields)."""
    return {k: v for k, v in action.items() if k in _LIST_KEYS}


@functools.cache
def load_examples() -> dict[str, Json]:
    """Return the documented GET examples by action type (shared: do not mutate)."""
    return dict(json.loads(EXAMPLES_PATH.read_text(encoding="utf-8")))


def documented_example(key: str) -> Json:
    """Return a copy of the documented GET example stored under key."""
    return copy.deepcopy(load_examples()[key])


def serialize(fields: Json) -> Json:
    """Drop None values, format datetimes and put keys in the documented order."""
    clean = {k: format_ts(v) if isinstance(v, datetime) else v for k, v in fields.items() if v is not None}
    ordered = {k: clean[k] for k in _KEY_ORDER if k in clean}
    return ordered | {k: v for k, v in clean.items() if k not in ordered}


def canned_json(status: int) -> web.Response:
    """Answer a canned JSON error (401, 403, 500)."""
    key, message, details = CANNED[status]
    return json_response(error_body(status, message, details, key=key), status=status)


def truncate(response: web.StreamResponse) -> web.Response:
    """Cut a JSON answer in half; Content-Length follows the cut body."""
    body = response.body if isinstance(response, web.Response) else None
    cut = body[: len(body) // 2] if isinstance(body, bytes) else b"{"
    return web.Response(status=response.status, body=cut, content_type="application/json")


def gateway_error(status: int) -> web.Response:
    """Answer like a proxy in front of the API: an HTML page."""
    html = _GATEWAY_HTML.format(status=status, reason=HTTPStatus(status).phrase)
    return web.Response(status=status, text=html, content_type="text/html")


def too_many_requests(retry_after_s: int, *, now: datetime) -> web.Response:
    """Answer 429 with the documented rate-limit headers."""
    details = "You have exceeded the number of API calls allowed per minute"
    body = error_body(429, "API limit reached", details, key="too_many_requests")
    retry_at = math.ceil(now.timestamp()) + retry_after_s
    headers = {
        "Retry-After": str(retry_after_s),
        "X-Rate-Limit-Retry": str(retry_at),
        "X-Rate-Limit-Type": "api_calls",
        "X-Rate-Limit-Remaining": "0",
    }
    response = json_response(body, status=429)
    response.headers.update(headers)
    return response
