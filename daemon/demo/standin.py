"""A local stand-in for Voucherify's async-actions API, for the demo, tests and benchmarks.

Serves `GET /v1/async-actions` and `GET /v1/async-actions/{id}` as documented, with
scripted faults (`inject`, faults.py) and an optional rolling per-minute rate limit. The
actions live in an `ActionBook` (actions.py); the bodies follow wire.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Final

from aiohttp import web

from daemon.demo.actions import ActionBook
from daemon.demo.faults import PATHS, FaultScript, RollingLimit, status_fault_response
from daemon.demo.scenario import play_demo_scenario
from daemon.demo.wire import (
    LIST_PATH,
    canned_json,
    classify_path,
    error_body,
    json_response,
    list_item,
    parse_end_date,
    parse_limit,
    too_many_requests,
    truncate,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RESET: Final = web.RequestKey("standin.reset", bool)
_SHUFFLE: Final = web.RequestKey("standin.shuffle", bool)


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


class VoucherifyStandIn(ActionBook):
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
        super().__init__(clock=clock or (lambda: datetime.now(UTC)))
        self._credentials = (app_id, app_token)
        self.requests: list[RecordedRequest] = []
        self.faults = FaultScript()
        self.rate_limit = RollingLimit(rate_limit_per_minute)
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

    # -- faults and counting ---------------------------------------------------------
    def inject(self, fault: str, *, times: int = 1, path: str = "any", **params: object) -> None:
        """Script a fault for the next `times` requests to path ("list", "get" or "any")."""
        self.faults.add(fault, times=times, path=path, params=params)

    def count(self, path: str = "any") -> int:
        """Count received requests to "list", "get" or "any" path."""
        if path not in PATHS:
            msg = f"unknown path {path!r}, expected one of {sorted(PATHS)}"
            raise ValueError(msg)
        return sum(1 for r in self.requests if path in ("any", r.kind))

    # -- HTTP ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), self._now(), 0))
        index, status = len(self.requests) - 1, 0
        try:
            response = await self._answer(request, handler)
            status = 0 if request.get(_RESET) else response.status
        finally:
            self.requests[index] = replace(self.requests[index], status=status)
        response.headers.setdefault("X-Rate-Limit-Limit", str(self.rate_limit.limit))
        response.headers.setdefault("X-Rate-Limit-Remaining", str(self.rate_limit.remaining))
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(classify_path(request.path))
        if fault is None:
            return await self._admit(request, handler)
        if fault.kind.isdigit():
            return status_fault_response(fault, now=self._clock())
        if fault.kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=fault.params.get("delay_s", 30))
        elif fault.kind == "reset":
            request[_RESET] = True
            if request.transport is not None:
                request.transport.abort()
        elif fault.kind == "malformed":
            return web.Response(text="<html>upstream error</html>", content_type="application/json")
        request[_SHUFFLE] = fault.kind == "shuffle"
        response = await self._admit(request, handler)
        return truncate(response) if fault.kind == "truncated" else response

    async def _admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = (request.headers.get("X-App-Id"), request.headers.get("X-App-Token"))
        if credentials != self._credentials:
            return canned_json(HTTPStatus.UNAUTHORIZED)
        if (retry_after_s := self.rate_limit.consume(self._clock())) is not None:
            return too_many_requests(retry_after_s, now=self._clock())
        try:
            return await handler(request)
        except web.HTTPException as exc:  # unknown route or method: answer JSON like the API
            return json_response(
                error_body(exc.status, exc.reason, f"{request.method} {request.path}"),
                status=exc.status,
            )

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


@contextlib.asynccontextmanager
async def standins(names: Iterable[str], *, app_token: str) -> AsyncIterator[dict[str, VoucherifyStandIn]]:
    """Run one stand-in per project name, each with the app id ``app-<name>``; close them all on the way out."""
    async with contextlib.AsyncExitStack() as exits:
        apis = {name: VoucherifyStandIn(app_id=f"app-{name}", app_token=app_token) for name in names}
        for api in apis.values():
            await api.start()
            exits.push_async_callback(api.close)
        yield apis


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m daemon.demo.standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--app-id", default="demo-app")
    parser.add_argument("--app-token", default="demo-token")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per rolling minute")
    parser.add_argument("--examples", action="store_true", help="preload the 22 documented examples")
    parser.add_argument("--demo", action="store_true", help="play the demo scenario once")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    standin = VoucherifyStandIn(app_id=args.app_id, app_token=args.app_token, rate_limit_per_minute=args.rate_limit)
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
