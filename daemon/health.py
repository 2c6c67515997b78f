"""The health and metrics listener: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers whether the process and its scheduler are alive (restart it if not);
``/readyz`` whether the relay is doing its job: the last poll succeeded recently (see
:func:`readiness`). Both answer ``{"status": "ok"|"unavailable", "detail": ...}`` with
200 or 503. ``/metrics`` is the Prometheus text format. The verdicts come from a
:class:`HealthSource` (the app), so this module knows nothing of polls or schedulers.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from typing import TYPE_CHECKING, Protocol

import structlog
from aiohttp import web

from daemon.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import Callable

    from daemon.metrics import RelayMetrics

log = structlog.get_logger("daemon.health")
STALE_AFTER_POLLS = 3
MIN_STALE_AFTER_S = 120.0  # one request may retry for 60 s (RetryPolicy.max_total_s): one slow cycle is not an outage
MAX_TICK_SILENCE_S = 30.0
MAX_POLL_S = 900.0
_ACTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 5.0
_LISTEN_HELP = "must be HOST:PORT (127.0.0.1:9464, 0.0.0.0:9464, [::1]:9464, or :9464 for every interface) or 'off'"


class HealthSource(Protocol):
    """What the listener asks: is the process alive, is it ready? Each answer has a short reason."""

    def alive(self) -> tuple[bool, str]:
        """Return whether the process and its scheduler work (False: restart me), and why."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Return whether the relay does its job (a recent poll succeeded), and why."""
        ...


def stale_after_s(poll_interval_s: float) -> float:
    """Return how old the last successful poll may be while the relay counts as ready."""
    return max(STALE_AFTER_POLLS * poll_interval_s, MIN_STALE_AFTER_S)


def readiness(
    last_ok_at: float | None,
    *,
    now: float,
    poll_interval_s: float,
    auth_failed: bool,
    stopping: bool = False,
    store_problem: str | None = None,
) -> tuple[bool, str]:
    """Decide readiness: not stopping, the state database works, credentials accepted, a poll succeeded within ``stale_after_s``.

    ``poll_interval_s`` is the longest interval the scheduler may be using now (the idle
    interval, when the relay has slowed down), so slowing down never reads as an outage.
    """
    if stopping:
        return False, "shutting down"
    if store_problem is not None:
        return False, store_problem
    if auth_failed:
        return False, "Voucherify refused the credentials (wrong keys or wrong cluster)"
    if last_ok_at is None:
        return False, "no successful poll yet"
    age_s, limit_s = max(0.0, now - last_ok_at), stale_after_s(poll_interval_s)
    if age_s > limit_s:
        return False, f"last successful poll {age_s:.0f}s ago (limit {limit_s:.0f}s)"
    return True, f"last successful poll {age_s:.0f}s ago"


def liveness(
    last_tick_at: float | None,
    *,
    now: float,
    scheduler_running: bool,
    poll_started_at: float | None = None,
    max_silence_s: float = MAX_TICK_SILENCE_S,
    max_poll_s: float = MAX_POLL_S,
) -> tuple[bool, str]:
    """Decide liveness: the scheduler runs, ticked lately (the loop is not blocked), no poll hangs.

    ``last_tick_at`` is when a scheduled job last ran (the 1 s dispatch job, say) and
    ``poll_started_at`` when the running poll began (None when none runs); all on one clock.
    """
    if not scheduler_running:
        return False, "scheduler is not running"
    if last_tick_at is not None and now - last_tick_at > max_silence_s:
        return False, f"no scheduler tick for {now - last_tick_at:.0f}s"
    if poll_started_at is not None and now - poll_started_at > max_poll_s:
        return False, f"a poll cycle has been running for {now - poll_started_at:.0f}s"
    return True, "scheduler running"


def parse_listen(value: str) -> tuple[str, int] | None:
    """Parse ``RELAY_HTTP_LISTEN``: ``(host, port)``, host ``""`` for every interface; None for ``off`` or empty."""
    text = value.strip()
    if text.lower() in {"", "off"}:
        return None
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit() or int(port_text) > 65535:  # noqa: PLR2004 - the largest TCP port
        raise ValueError(f"{_LISTEN_HELP}: {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ipv6(host):
            raise ValueError(f"{_LISTEN_HELP}: {value!r} (not an IPv6 address)")
    elif _is_ipv6(host):
        raise ValueError(f"{_LISTEN_HELP}: {value!r} (put an IPv6 address in brackets: [::1]:9464)")
    elif host and not _HOSTNAME.match(host):
        raise ValueError(f"{_LISTEN_HELP}: {value!r}")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class HealthServer:
    """An aiohttp listener for the health checks and the metrics."""

    def __init__(
        self,
        source: HealthSource,
        metrics: RelayMetrics | None = None,
        *,
        watch: Callable[[str], None] | None = None,
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
        """``POST /watch {"action_id": "aa_..."}`` with ``Authorization: Bearer <RELAY_WATCH_TOKEN>``."""
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
        self._watch(action_id)
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
