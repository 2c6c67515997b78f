"""The HTTP listener: ``/healthz``, ``/readyz``, ``/metrics`` and ``POST /watch``.

``/healthz`` answers whether the process and its scheduler are alive (restart it if not);
``/readyz`` whether the relay is doing its job: the last poll succeeded recently (the
rules are pure, in :mod:`daemon.readiness`). Both answer
``{"status": "ok"|"unavailable", "detail": ...}`` with 200 or 503. ``/metrics`` is the
Prometheus text format. The verdicts come from a :class:`HealthSource` (the app), so this
module knows nothing of polls or schedulers.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web

from daemon.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import Callable

    from daemon.metrics import RelayMetrics

log = structlog.get_logger("daemon.health")
_ACTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 5.0


class HealthSource(Protocol):
    """What the listener asks: is the process alive, is it ready? Each answer has a short reason."""

    def alive(self) -> tuple[bool, str]:
        """Return whether the process and its scheduler work (False: restart me), and why."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Return whether the relay does its job (a recent poll succeeded), and why."""
        ...


class HealthServer:
    """An aiohttp listener for the health checks and the metrics."""

    def __init__(
        self,
        source: HealthSource,
        metrics: RelayMetrics | None = None,
        *,
        watch: Callable[[str, str | None], tuple[int, str] | None] | None = None,
        watch_token: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._source = source
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._listener: asyncio.Server | None = None
        self._metrics = metrics
        self._watch = watch if watch_token else None
        self._watch_token = watch_token or ""
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0: any free port); return the bound port."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._render_metrics)
        if self._watch is not None:
            app.router.add_post("/watch", self._watch_action)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=self._idle_timeout_s)
        await self._runner.setup()
        # aiohttp has no connection cap; the protocol factory refuses connections past it.
        self._listener = await asyncio.get_running_loop().create_server(self._accept, host or None, port, reuse_address=True)
        bound = int(self._listener.sockets[0].getsockname()[1])
        log.info("health.listening", host=host or "*", port=bound, metrics=self._metrics is not None)
        return bound

    def _accept(self) -> asyncio.BaseProtocol:
        """Hand a new connection to aiohttp, or close it at once when MAX_CONNECTIONS are open."""
        assert self._runner is not None  # noqa: S101 - the listener starts after the runner
        server = self._runner.server
        if server is None or len(server.connections) >= self._max_connections:
            log.warning("health.connection_refused", open=len(server.connections) if server else 0, limit=self._max_connections)
            return _Refused()
        return server()

    async def close(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _verdict(self._source.alive)

    async def _readyz(self, _request: web.Request) -> web.Response:
        return _verdict(self._source.ready)

    async def _render_metrics(self, _request: web.Request) -> web.Response:
        assert self._metrics is not None  # noqa: S101 - the route exists only with metrics
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    async def _watch_action(self, request: web.Request) -> web.Response:
        """``POST /watch {"action_id": "aa_...", "project": "eu"}`` with ``Authorization: Bearer <RELAY_WATCH_TOKEN>`` (project: with several)."""
        assert self._watch is not None  # noqa: S101 - the route exists only with a watcher
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(offered.encode(), self._watch_token.encode()):
            return web.json_response({"status": "unauthorized", "detail": "send Authorization: Bearer <RELAY_WATCH_TOKEN>"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            body = None
        action_id = body.get("action_id") if isinstance(body, dict) else None
        if not isinstance(action_id, str) or not _ACTION_ID.match(action_id):
            return web.json_response({"status": "invalid", "detail": 'send {"action_id": "aa_..."}'}, status=400)
        project = body.get("project") if isinstance(body, dict) else None
        if project is not None and not isinstance(project, str):
            return web.json_response({"status": "invalid", "detail": '"project" must be a project name'}, status=400)
        refused = self._watch(action_id, project)
        if refused is not None:
            status, detail = refused
            return web.json_response({"status": "invalid" if status == HTTPStatus.BAD_REQUEST else "not_polling", "detail": detail}, status=status)
        return web.json_response({"status": "watching", "detail": action_id}, status=202)


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Close the connection."""
        transport.close()


def _verdict(check: Callable[[], tuple[bool, str]]) -> web.Response:
    try:
        ok, detail = check()
    except Exception as exc:
        log.exception("health.check_failed")
        ok, detail = False, f"health check raised {type(exc).__name__}"
    body = {"status": "ok" if ok else "unavailable", "detail": detail}
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})
