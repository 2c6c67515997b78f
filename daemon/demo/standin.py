"""A local stand-in for Voucherify's async-actions API, for the demo, tests and benchmarks.

Serves `GET /v1/async-actions` and `GET /v1/async-actions/{id}` as documented, with
scripted faults (`inject`) and an optional rolling per-minute rate limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import json
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from aiohttp import web

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EXAMPLES_PATH: Final = Path(__file__).with_name("voucherify_examples.json")
LIST_PATH: Final = "/v1/async-actions"
_STATUS_FAULTS: Final = frozenset({"429", "500", "502", "503", "401", "403"})
FAULTS: Final = _STATUS_FAULTS | {"timeout", "reset", "malformed", "truncated", "shuffle"}
PATHS: Final = frozenset({"list", "get", "any"})
UNLIMITED: Final = 1_000_000  # nominal X-Rate-Limit-Limit when no limit is configured
DEFAULT_LIMIT: Final = 10  # the openapi documents 1..100 but no default
_WINDOW: Final = timedelta(seconds=60)
_MS: Final = timedelta(milliseconds=1)
# fmt: off
_KEY_ORDER: Final = ("id", "type", "status", "operation_status", "result", "created_at",
                     "updated_at", "request_id", "progress", "processing_time", "object")
# fmt: on
_LIST_KEYS: Final = frozenset(_KEY_ORDER) - {"result"}
_RESET: Final = web.RequestKey("standin.reset", bool)
_SHUFFLE: Final = web.RequestKey("standin.shuffle", bool)
_CANNED: Final = {
    401: ("unauthorized", "Unauthorized", "Invalid or missing X-App-Id / X-App-Token headers"),
    403: ("forbidden", "Forbidden", "The API key is not allowed to access this resource"),
    500: (None, "Internal Server Error", "An internal API error occurred"),
}
_GATEWAY_HTML: Final = "<html><body><h1>{status} {reason}</h1></body></html>"  # proxies answer HTML


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request received, with the status answered (0 when the connection was reset)."""

    method: str
    path: str
    query: dict[str, str]
    at: datetime
    status: int

    @property
    def kind(self) -> str:
        """Return "list", "get" or "other"."""
        return classify_path(self.path)


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted fault waiting for its next matching requests."""

    kind: str
    path: str
    remaining: int
    params: Json = field(default_factory=dict)


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


def error_body(
    code: int, message: str, details: str, *, key: str | None = None, **more: str
) -> Json:
    """Build an error body shaped like errors.mdx and the openapi `Error` object."""
    head: Json = {"code": code} | ({"key": key} if key else {})
    return head | {"message": message, "details": details, "request_id": new_request_id()} | more


def json_response(body: Json, *, status: int = 200) -> web.Response:
    """Answer compact JSON like Voucherify does."""
    return web.json_response(
        body, status=status, dumps=functools.partial(json.dumps, separators=(",", ":"))
    )


def list_item(action: Json) -> Json:
    """Drop what the list endpoint never shows (result, extra fields)."""
    return {k: v for k, v in action.items() if k in _LIST_KEYS}


@functools.cache
def _load_examples() -> dict[str, Json]:
    return dict(json.loads(EXAMPLES_PATH.read_text(encoding="utf-8")))


def documented_example(key: str) -> Json:
    """Return a copy of the documented GET example stored under key."""
    return copy.deepcopy(_load_examples()[key])


def _serialize(fields: Json) -> Json:
    """Drop None values, format datetimes and put keys in the documented order."""
    clean = {
        k: format_ts(v) if isinstance(v, datetime) else v
        for k, v in fields.items()
        if v is not None
    }
    ordered = {k: clean[k] for k in _KEY_ORDER if k in clean}
    return ordered | {k: v for k, v in clean.items() if k not in ordered}


class VoucherifyStandIn:
    """An aiohttp server answering like Voucherify's async-actions API, scripted by tests."""

    def __init__(
        self,
        *,
        app_id: str = "demo-app",
        app_token: str = "demo-token",  # noqa: S107 - a stand-in's demo credential
        rate_limit_per_minute: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Configure credentials, an optional rate limit and the clock (the limiter uses it too)."""
        self._credentials = (app_id, app_token)
        self._rate_limit = rate_limit_per_minute
        self._clock = clock or (lambda: datetime.now(UTC))
        self.actions: dict[str, Json] = {}
        self.requests: list[RecordedRequest] = []
        self._created: dict[str, datetime] = {}
        self._faults: list[Fault] = []
        self._window: deque[datetime] = deque()
        self._last_auto: datetime | None = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 picks a free port) and return the base URL."""
        self._closing.clear()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(LIST_PATH, self._list)
        app.router.add_get(LIST_PATH + "/{action_id}", self._get)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}"
        return self._base_url

    async def close(self) -> None:
        """Stop serving; pending "timeout" faults answer at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """Return the URL the stand-in serves on."""
        if self._base_url is None:
            msg = "VoucherifyStandIn.start() has not been called"
            raise RuntimeError(msg)
        return self._base_url

    # -- scenario control ------------------------------------------------------------
    def add_action(
        self,
        type: str = "CUSTOMERS.IMPORT_CSV",  # noqa: A002 - Voucherify's field name
        *,
        status: str = "ENQUEUED",
        created_at: datetime | None = None,
        result: Json | None = None,
        operation_status: str | None = None,
        progress: int = 0,
        id: str | None = None,  # noqa: A002 - Voucherify's field name
        **extra: object,
    ) -> str:
        """Add an action and return its id; created_at defaults to a strictly increasing now."""
        created = to_utc_ms(created_at) if created_at is not None else self._next_created_at()
        fields: Json = {
            "id": id or self._new_id(),
            "type": type,
            "status": status,
            "operation_status": operation_status,
            "result": result,
            "created_at": created,
            "updated_at": created,
            "request_id": new_request_id(),
            "progress": progress,
            "object": "async_action",
            **extra,
        }
        return self._insert(fields)

    def update_action(self, action_id: str, **fields: object) -> None:
        """Change fields of an action (None removes one) and set updated_at to now."""
        self._store(action_id, {**self._existing(action_id), "updated_at": self._now(), **fields})

    def complete_action(
        self,
        action_id: str,
        *,
        status: str = "DONE",
        result: Json | None = None,
        operation_status: str | None = None,
        example: str | None = None,
    ) -> None:
        """Finish an action: terminal status, progress 100, processing_time and result."""
        created, now = self._created[self._existing(action_id)["id"]], self._now()
        fields: Json = {
            "status": status,
            "progress": 100,
            "updated_at": now,
            "processing_time": max(0, (now - created) // _MS),
        }
        documented = documented_example(example) if example else {}
        fields |= {k: documented[k] for k in ("result", "operation_status") if k in documented}
        explicit = {"result": result, "operation_status": operation_status}
        fields |= {k: v for k, v in explicit.items() if v is not None}
        self.update_action(action_id, **fields)

    def remove_action(self, action_id: str) -> None:
        """Forget an action: GET answers 404 and the list omits it."""
        self._existing(action_id)
        del self.actions[action_id], self._created[action_id]

    def add_example_actions(self) -> list[str]:
        """Add one action per documented GET example, with fresh ids and created_at."""
        ids = []
        for body in _load_examples().values():
            created = self._next_created_at()
            updated = created + body.get("processing_time", 0) * _MS
            fields = copy.deepcopy(body) | {
                "id": self._new_id(),
                "request_id": new_request_id(),
                "created_at": created,
                "updated_at": updated,
            }
            ids.append(self._insert(fields))
        return ids

    def inject(self, fault: str, *, times: int = 1, path: str = "any", **params: object) -> None:
        """Script a fault for the next `times` requests to path ("list", "get" or "any")."""
        if fault not in FAULTS or path not in PATHS or times < 1:
            msg = f"unknown fault {fault!r}, path {path!r} or times {times}"
            raise ValueError(msg)
        self._faults.append(Fault(fault, "list" if fault == "shuffle" else path, times, params))

    def count(self, path: str = "any") -> int:
        """Count received requests to "list", "get" or "any" path."""
        if path not in PATHS:
            msg = f"unknown path {path!r}, expected one of {sorted(PATHS)}"
            raise ValueError(msg)
        return sum(1 for r in self.requests if path in ("any", r.kind))

    # -- action storage --------------------------------------------------------------
    def _now(self) -> datetime:
        return to_utc_ms(self._clock())

    def _next_created_at(self) -> datetime:
        now = self._now()
        if self._last_auto is not None and now <= self._last_auto:
            now = self._last_auto + _MS  # paging by exclusive end_date needs distinct created_at
        self._last_auto = now
        return now

    def _new_id(self) -> str:
        while (action_id := "aa_" + secrets.token_hex(9)) in self.actions:
            pass
        return action_id

    def _existing(self, action_id: str) -> Json:
        if action_id not in self.actions:
            msg = f"no async action {action_id!r}"
            raise KeyError(msg)
        return self.actions[action_id]

    def _insert(self, fields: Json) -> str:
        if fields["id"] in self.actions:
            msg = f"duplicate async action id {fields['id']!r}"
            raise ValueError(msg)
        self._store(fields["id"], fields)
        return str(fields["id"])

    def _store(self, action_id: str, fields: Json) -> None:
        action = _serialize(fields | {"id": action_id})
        self.actions[action_id] = action
        self._created[action_id] = parse_end_date(action["created_at"])

    # -- HTTP ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), self._now(), 0)
        )
        index, status = len(self.requests) - 1, 0
        try:
            response = await self._answer(request, handler)
            status = 0 if request.get(_RESET) else response.status
        finally:
            self.requests[index] = replace(self.requests[index], status=status)
        response.headers.setdefault("X-Rate-Limit-Limit", str(self._rate_limit or UNLIMITED))
        response.headers.setdefault("X-Rate-Limit-Remaining", str(self._remaining()))
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self._take_fault(classify_path(request.path))
        if fault is None:
            return await self._admit(request, handler)
        if fault.kind.isdigit():
            return self._canned(int(fault.kind), fault)
        if fault.kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._closing.wait(), timeout=fault.params.get("delay_s", 30)
                )
        elif fault.kind == "reset":
            request[_RESET] = True
            if request.transport is not None:
                request.transport.abort()
        elif fault.kind == "malformed":
            return web.Response(text="<html>upstream error</html>", content_type="application/json")
        request[_SHUFFLE] = fault.kind == "shuffle"
        response = await self._admit(request, handler)
        return _truncate(response) if fault.kind == "truncated" else response

    def _take_fault(self, kind: str) -> Fault | None:
        for i, fault in enumerate(self._faults):
            if fault.path in ("any", kind):
                if fault.remaining == 1:
                    del self._faults[i]
                else:
                    self._faults[i] = replace(fault, remaining=fault.remaining - 1)
                return fault
        return None

    def _canned(self, status: int, fault: Fault) -> web.Response:
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            return self._too_many(int(fault.params.get("retry_after", 1)))
        if status in _CANNED:
            return _canned_json(status)
        html = _GATEWAY_HTML.format(status=status, reason=HTTPStatus(status).phrase)
        return web.Response(status=status, text=html, content_type="text/html")

    def _too_many(self, retry_after_s: int) -> web.Response:
        details = "You have exceeded the number of API calls allowed per minute"
        body = error_body(429, "API limit reached", details, key="too_many_requests")
        retry_at = math.ceil(self._clock().timestamp()) + retry_after_s
        headers = {
            "Retry-After": str(retry_after_s),
            "X-Rate-Limit-Retry": str(retry_at),
            "X-Rate-Limit-Type": "api_calls",
            "X-Rate-Limit-Remaining": "0",
        }
        response = json_response(body, status=429)
        response.headers.update(headers)
        return response

    async def _admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = (request.headers.get("X-App-Id"), request.headers.get("X-App-Token"))
        if credentials != self._credentials:
            return _canned_json(HTTPStatus.UNAUTHORIZED)
        if (retry_after_s := self._consume_rate_limit()) is not None:
            return self._too_many(retry_after_s)
        try:
            return await handler(request)
        except web.HTTPException as exc:  # unknown route or method: answer JSON like the API
            return json_response(
                error_body(exc.status, exc.reason, f"{request.method} {request.path}"),
                status=exc.status,
            )

    def _consume_rate_limit(self) -> int | None:
        """Admit one request into the rolling window or return the seconds to wait."""
        now = self._clock()
        while self._window and self._window[0] <= now - _WINDOW:
            self._window.popleft()
        if self._rate_limit is not None and len(self._window) >= self._rate_limit:
            return max(1, math.ceil((self._window[0] + _WINDOW - now).total_seconds()))
        self._window.append(now)
        return None

    def _remaining(self) -> int:
        return max(0, (self._rate_limit or UNLIMITED) - len(self._window))

    async def _list(self, request: web.Request) -> web.Response:
        try:
            limit = parse_limit(request.query.get("limit"))
            end = parse_end_date(request.query["end_date"]) if "end_date" in request.query else None
        except ValueError as exc:
            body = error_body(400, "Invalid query params", str(exc), key="invalid_query_params")
            return json_response(body, status=400)
        matching = [i for i, created in self._created.items() if end is None or created < end]
        newest = sorted(matching, key=lambda i: (self._created[i], i), reverse=True)
        page = newest[:limit][:: -1 if request.get(_SHUFFLE) else 1]
        return json_response(
            {
                "object": "list",
                "data_ref": "async_actions",
                "async_actions": [list_item(self.actions[i]) for i in page],
                "has_more": len(newest) > limit,
            }
        )

    async def _get(self, request: web.Request) -> web.Response:
        action_id = request.match_info["action_id"]
        if action_id in self.actions:
            return json_response(copy.deepcopy(self.actions[action_id]))
        details = f"Cannot find async_action with id {action_id}"
        resource = {"resource_id": action_id, "resource_type": "async_action"}
        body = error_body(404, "Resource not found", details, key="not_found", **resource)
        return json_response(body, status=404)


def _canned_json(status: int) -> web.Response:
    """Answer a canned JSON error (401, 403, 500)."""
    key, message, details = _CANNED[status]
    return json_response(error_body(status, message, details, key=key), status=status)


def _truncate(response: web.StreamResponse) -> web.Response:
    """Cut a JSON answer in half; Content-Length follows the cut body."""
    body = response.body if isinstance(response, web.Response) else None
    cut = body[: len(body) // 2] if isinstance(body, bytes) else b"{"
    return web.Response(status=response.status, body=cut, content_type="application/json")


async def play_demo_scenario(standin: VoucherifyStandIn, *, step_s: float = 1.0) -> None:
    """Play four overlapping lifecycles over six steps: success, partial and total failures."""
    customers = standin.add_action("CUSTOMERS.IMPORT_CSV")
    bulk = standin.add_action("VOUCHERS.BULK_UPDATE")
    await asyncio.sleep(step_s)
    standin.update_action(customers, status="IN_PROGRESS", progress=30)
    standin.update_action(bulk, status="IN_PROGRESS", progress=50)
    products = standin.add_action("PRODUCTS.IMPORT_CSV")
    await asyncio.sleep(step_s)
    standin.update_action(customers, progress=70)
    standin.update_action(products, status="IN_PROGRESS", progress=20)
    standin.complete_action(
        bulk, example="VOUCHERS.BULK_UPDATE", result=_bulk_result(standin, bulk)
    )
    await asyncio.sleep(step_s)
    standin.complete_action(customers, result=_partial_customers_result())
    standin.update_action(products, progress=60)
    vouchers = standin.add_action("VOUCHERS.IMPORT_CSV")
    await asyncio.sleep(step_s)
    message = "Import failed: the CSV file has no 'name' column in its header row."
    standin.complete_action(products, status="FAILED", result={"message": message})
    standin.update_action(vouchers, status="IN_PROGRESS", progress=50)
    await asyncio.sleep(step_s)
    standin.complete_action(vouchers, example="VOUCHERS.IMPORT_CSV")  # documented: all rows failed
    await asyncio.sleep(step_s)


def _bulk_result(standin: VoucherifyStandIn, action_id: str) -> Json:
    result: Json = documented_example("VOUCHERS.BULK_UPDATE")["result"]
    result["reports"] = [f"{standin.base_url}/reports/{action_id}.csv"]  # docs show a placeholder
    return result


def _partial_customers_result() -> Json:
    failed = documented_example("CUSTOMERS.IMPORT_CSV")["result"]["failed"]
    message = f"3 customer(s) imported successfully, {len(failed)} failed."
    return {"message": message, "failed": failed, "done_count": 3, "failed_count": len(failed)}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m daemon.demo.standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--app-id", default="demo-app")
    parser.add_argument("--app-token", default="demo-token")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per rolling minute")
    parser.add_argument(
        "--examples", action="store_true", help="preload the 22 documented examples"
    )
    parser.add_argument("--demo", action="store_true", help="play the demo scenario once")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    standin = VoucherifyStandIn(
        app_id=args.app_id, app_token=args.app_token, rate_limit_per_minute=args.rate_limit
    )
    try:
        url = await standin.start(args.host, args.port)
        print(f"voucherify stand-in serving on {url}", flush=True)
        if args.examples:
            standin.add_example_actions()
        if args.demo:
            await play_demo_scenario(standin)
        await asyncio.Event().wait()
    finally:
        await standin.close()


def main(argv: list[str] | None = None) -> None:
    """Serve the stand-in until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
