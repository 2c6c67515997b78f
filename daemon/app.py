"""Composition root: settings -> adapters -> scheduler -> signals -> close.

Only this module knows every piece. ``Relay`` owns the HTTP session, the store, the
Voucherify client, the poller, the dispatcher and the APScheduler jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.budget import WINDOW_S, RequestBudget
from daemon.cadence import Cadence, is_busy, last_activity, next_poll
from daemon.errors import AuthError, BudgetExhaustedError, RateLimitedError, StoreError, VoucherifyError
from daemon.health import HealthServer, liveness, parse_listen, readiness
from daemon.lock import InstanceLock
from daemon.metrics import RelayMetrics, failure_reason
from daemon.model import Event
from daemon.outbox import DeliveryPolicy, Dispatcher
from daemon.poller import Poller, PollReport
from daemon.settings import RelaySettings, SinkSettings
from daemon.sinks import Sink
from daemon.sinks.slack import SlackSink
from daemon.sinks.webhook import WebhookSink
from daemon.store import OutboxStats, Stores
from daemon.store.sqlite import open_sqlite
from daemon.voucherify import RetryPolicy, VoucherifyClient

log = structlog.get_logger("daemon.app")
DISPATCH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
SHUTDOWN_GRACE_S = 20.0
AUTH_BACKOFF_S = (60.0, 900.0)
BLOCKED_UNTIL = "api_blocked_until"  # a 429's Retry-After deadline, kept across restarts


def build_sinks(settings: RelaySettings, session: aiohttp.ClientSession) -> dict[str, Sink]:
    """Create one adapter per configured sink."""
    sinks: dict[str, Sink] = {}
    for name, spec in settings.all_sinks().items():
        if spec.kind == "slack":
            sinks[name] = SlackSink(name, spec, session, min_interval_s=spec.min_interval_s)
        else:
            sinks[name] = WebhookSink(name, spec, session)
    return sinks


def route_event(specs: Mapping[str, SinkSettings], event: Event) -> list[str]:
    """Return the sinks whose filters accept ``event`` (by action type glob and outcome)."""
    action_type = str(event.data.get("type") or "")
    outcome = str(event.data.get("outcome") or "")
    return [name for name, spec in specs.items() if spec.accepts(action_type=action_type, outcome=outcome)]


class Relay:
    """The running daemon: poll and dispatch jobs on one event loop."""

    def __init__(self, settings: RelaySettings, *, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self._retry = retry
        self._lock = InstanceLock(settings.state_path)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resume_at = 0.0
        self._auth_failures = 0
        self.last_poll: PollReport | None = None
        self.last_poll_ok_at: float | None = None
        self.cadence = Cadence(fast_s=settings.poll_interval, idle_s=settings.idle_poll_interval, budget_per_hour=settings.api_budget_per_hour)
        self._last_activity_at = 0.0
        self._pace_reason = "busy"
        self._interval_s = settings.poll_interval
        self._last_tick = time.monotonic()
        self._poll_started: float | None = None
        self._last_poll_at = 0.0
        self._stopping = False
        self._store_write_error: str | None = None
        self._file_problem: str | None = None
        self._seen_events: list[Event] = []
        self._health: HealthServer | None = None
        self.http_port: int | None = None
        self.metrics = RelayMetrics()
        self._sink_specs = settings.all_sinks()
        self._outbox_stats: OutboxStats | None = None
        self._outbox_stats_error = "not read yet"

    async def start(self) -> None:
        """Open the database, the HTTP session and the adapters; start the scheduler.

        If anything fails on the way, what was opened is closed again before the error propagates.
        """
        self._lock.acquire()
        self._opened: list[Stores | aiohttp.ClientSession] = []
        try:
            await self._start()
        except BaseException:
            await self._close_resources()
            raise

    async def _start(self) -> None:
        self.stores = open_sqlite(self.settings.state_path)
        self._opened.append(self.stores)
        self._session = aiohttp.ClientSession(raise_for_status=False)
        self._opened.append(self._session)
        history = await self.stores.calls.since(time.time() - WINDOW_S)
        budget = RequestBudget(self.settings.api_budget_per_hour, history=history)
        self.client = VoucherifyClient(
            self._session,
            base_url=self.settings.voucherify_api_url,
            app_id=self.settings.voucherify_app_id or "",
            app_token=self.settings.voucherify_app_token.get_secret_value() if self.settings.voucherify_app_token else "",
            budget=budget,
            retry=self._retry or RetryPolicy(max_attempts=self.settings.api_max_attempts),
            timeout_s=self.settings.api_timeout_s,
            max_response_bytes=self.settings.api_max_response_bytes,
            on_request=(lambda at: self.stores.calls.record([at])) if self.settings.api_budget_per_hour else None,
            blocked_until=float(await self.stores.actions.load_meta(BLOCKED_UNTIL) or 0),
            on_blocked=lambda until: self.stores.actions.save_meta(BLOCKED_UNTIL, f"{until:.3f}"),
        )
        self.sinks = build_sinks(self.settings, self._session)
        self.poller = Poller(
            client=self.client,
            store=self.stores.actions,
            route=self.route,
            page_size=self.settings.list_page_size,
            max_pages=self.settings.max_pages_per_cycle,
            backfill=self.settings.backfill,
            stuck_after=self.settings.stuck_after or None,
            max_event_bytes=self.settings.max_event_bytes,
        )
        policy = DeliveryPolicy(max_delay_s=self.settings.delivery_retry_max_delay, max_age_s=self.settings.delivery_max_age.total_seconds())
        self.dispatcher = Dispatcher(
            store=self.stores.outbox, sinks=self.sinks, policy=policy, on_result=self.metrics.delivery_result, on_store_failed=self.metrics.store_write_failed
        )
        await self.dispatcher.start()
        await self._refresh_outbox_stats()
        self.metrics.declare_sinks(self.sinks)
        self.metrics.watch(outbox_stats=self.outbox_stats, ready=self.ready)
        await self._start_health()
        self._scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        now = _now_dt()
        self._scheduler.add_job(self._guard(self.poll), "interval", seconds=self.settings.poll_interval, id="poll", next_run_time=now)
        self._scheduler.add_job(self._guard(self.dispatch), "interval", seconds=DISPATCH_INTERVAL_S, id="dispatch", next_run_time=now)
        self._scheduler.add_job(self._guard(self.prune), "interval", seconds=PRUNE_INTERVAL_S, id="prune", next_run_time=now)
        self._scheduler.start()
        log.info(
            "relay.started",
            api_url=self.settings.voucherify_api_url,
            poll_interval_s=self.settings.poll_interval,
            idle_poll_interval_s=self.settings.idle_poll_interval,
            api_budget_per_hour=self.settings.api_budget_per_hour,
            state=str(self.settings.state_path),
            sinks={name: sink.describe() for name, sink in self.sinks.items()},
            first_run=(await self.stores.actions.load_cursor()).first_run,
            backfill_s=self.settings.backfill.total_seconds() if self.settings.backfill else None,
        )

    async def _start_health(self) -> None:
        address = parse_listen(self.settings.http_listen)
        if address is None:
            return
        token = self.settings.watch_token.get_secret_value() if self.settings.watch_token else None
        self._health = HealthServer(self, self.metrics, watch=self.watch, watch_token=token)
        try:
            self.http_port = await self._health.start(*address)
        except OSError as exc:
            msg = f"RELAY_HTTP_LISTEN={self.settings.http_listen}: cannot listen ({exc.strerror})"
            raise StoreError(msg) from None

    def alive(self) -> tuple[bool, str]:
        """Whether the scheduler runs and its jobs tick (for /healthz and the systemd watchdog)."""
        running = self._scheduler.running and not self._stopping
        return liveness(self._last_tick, now=time.monotonic(), scheduler_running=running, poll_started_at=self._poll_started)

    def ready(self) -> tuple[bool, str]:
        """Whether a poll succeeded recently, the keys are accepted and the state database works (for /readyz)."""
        interval = max(self.settings.poll_interval, self._interval_s)
        return readiness(
            self.last_poll_ok_at,
            now=time.time(),
            poll_interval_s=interval,
            auth_failed=self._auth_failures > 0,
            stopping=self._stopping,
            store_problem=self._store_problem(),
        )

    def _store_problem(self) -> str | None:
        if self._store_file_gone():
            return f"{self._file_problem}; polling and deliveries stopped: restore it or restart the relay"
        cause = self._store_write_error or self.dispatcher.store_failure()
        return None if cause is None else f"cannot write the state database ({cause})"

    def _store_file_gone(self) -> bool:
        """Whether the database file was deleted or replaced under us (logged once; it stays so until restart)."""
        if self._file_problem is None and (problem := self.stores.file_problem()) is not None:
            self._file_problem = problem
            log.error("store.file_replaced", path=self.stores.location, problem=problem, hint="polling and deliveries stop; restart the relay")
        return self._file_problem is not None

    def route(self, event: Event) -> Sequence[str]:
        """Return the sinks an event goes to."""
        self._seen_events.append(event)
        return route_event(self._sink_specs, event)

    def _guard(self, job: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        """Track the running job so shutdown can wait for it."""

        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await job()
            finally:
                if task is not None:
                    self._tasks.discard(task)

        run.__name__ = job.__name__
        return run

    async def poll(self) -> None:
        """Run one poll cycle; log its outcome; never raise."""
        if time.time() < self._resume_at or self._store_file_gone():
            return
        self._poll_started = started = time.monotonic()
        self._last_poll_at = time.time()
        self._seen_events.clear()
        try:
            report = await self.poller.poll_once()
        except Exception as exc:  # noqa: BLE001 - one bad cycle never stops the daemon
            self._poll_failed(exc)
            self.metrics.poll_failed(failure_reason(exc), duration_s=time.monotonic() - started)
            return
        finally:
            self._poll_started = None
            self.metrics.observe_api_calls(self.client.calls)
            self.metrics.set_rate_limit_remaining(self.client.rate_limit_remaining)
        self._auth_failures = 0
        self._store_write_error = None
        self.last_poll, self.last_poll_ok_at = report, time.time()
        self.metrics.observe_poll(report, duration_s=time.monotonic() - started)
        for event in self._seen_events:
            self.metrics.observe_event(event.type, outcome=event.data.get("outcome"), action_type=event.data.get("type"))
        await self._log_cycle(report, started)
        self._pace(report)
        if report.events:
            self._wake_dispatch()

    def _poll_failed(self, exc: Exception) -> None:
        if isinstance(exc, AuthError):
            self._auth_backoff(exc)
        elif isinstance(exc, (RateLimitedError, BudgetExhaustedError)):
            self._resume_at = exc.retry_at
            log.warning("poll.deferred", caused_by=str(exc), resume_in_s=round(exc.retry_at - time.time(), 1))
        elif isinstance(exc, VoucherifyError):
            log.warning("poll.failed", caused_by=str(exc), hint="retried next cycle")
        elif isinstance(exc, StoreError):
            self._store_write_error = str(exc)
            log.error("poll.store_failed", caused_by=str(exc))
        else:
            log.error("poll.crashed", exc_info=exc)

    def _pace(self, report: PollReport) -> None:
        """Schedule the next poll: fast while busy, slow when idle, never above the budget."""
        now = time.time()
        self._last_activity_at = last_activity(
            self._last_activity_at,
            now=now,
            in_flight=report.in_flight or int(report.backlog_window_s is not None),  # stay fast while a list backlog is owed
            transitions=report.transitions,
            first_run=report.first_run,
        )
        busy = is_busy(self.cadence, now=now, last_activity_at=self._last_activity_at)
        decision = next_poll(self.cadence, busy=busy, remaining=self.client.rate_limit_remaining, limit=self.client.rate_limit_limit)
        if decision.reason != self._pace_reason:
            self._log_pace(decision.reason, decision.interval_s)
            self._pace_reason = decision.reason
        self._interval_s = decision.interval_s
        job = self._scheduler.get_job("poll")
        if job is not None:
            job.modify(next_run_time=datetime.fromtimestamp(now + decision.interval_s, tz=UTC))

    def _log_pace(self, reason: str, interval_s: float) -> None:
        if reason == "budget":
            hint = "RELAY_API_BUDGET_PER_HOUR spreads polls evenly; raise it for faster detection"
            log.warning("poll.budget_binding", interval_s=round(interval_s, 1), hint=hint)
        elif reason == "rate_limit":
            client = self.client
            hint = "slowing down to leave headroom for your application"
            log.warning("poll.rate_limit_low", interval_s=interval_s, remaining=client.rate_limit_remaining, limit=client.rate_limit_limit, hint=hint)
        else:
            log.info("poll.pace", mode=reason, interval_s=interval_s)

    def watch(self, action_id: str) -> None:
        """Your application just started ``action_id``: poll now and stay fast while it runs."""
        log.info("watch.requested", action_id=action_id)
        self.wake_poll()

    def wake_poll(self) -> None:
        """Poll soon and stay fast for a while (new activity is expected).

        Wakes coalesce: the next poll comes no sooner than one fast interval (or the
        budget's floor, if longer) after the last one started, and never later than planned.
        """
        now = time.time()
        self._last_activity_at = now
        job = self._scheduler.get_job("poll")
        if job is None:
            return
        floor_s = max(self.cadence.fast_s, self.cadence.budget_floor_s)
        wake_at = datetime.fromtimestamp(max(now, self._last_poll_at + floor_s), tz=UTC)
        if job.next_run_time is None or wake_at < job.next_run_time:
            job.modify(next_run_time=wake_at)

    async def _log_cycle(self, report: PollReport, started: float) -> None:
        stats = await self.stores.outbox.stats()
        self._outbox_stats = stats
        log.info(
            "poll.completed",
            listed=report.listed,
            pages=report.pages,
            transitions=report.transitions,
            events=report.events,
            in_flight=report.in_flight,
            api_calls=report.api_calls,
            rate_limit_remaining=self.client.rate_limit_remaining,
            outbox_pending=stats.pending,
            dead_letters=stats.dead,
            baseline=report.first_run or None,
            backlog_pages=report.backlog_pages or None,
            backlog_window_s=None if report.backlog_window_s is None else round(report.backlog_window_s, 1),
            backlog_pages_owed=report.backlog_pages_owed,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _auth_backoff(self, exc: AuthError) -> None:
        self._auth_failures += 1
        pause = min(AUTH_BACKOFF_S[1], AUTH_BACKOFF_S[0] * 2 ** (self._auth_failures - 1))
        self._resume_at = time.time() + pause
        log.error("poll.auth_failed", caused_by=str(exc), retry_in_s=pause, failures=self._auth_failures)

    def _wake_dispatch(self) -> None:
        job = self._scheduler.get_job("dispatch")
        if job is not None:
            job.modify(next_run_time=_now_dt())

    async def dispatch(self) -> None:
        """Start draining sinks with due deliveries; each drains on its own task."""
        self._last_tick = time.monotonic()
        if not self._store_file_gone():
            self.dispatcher.kick()
            await self._refresh_outbox_stats()

    async def _refresh_outbox_stats(self) -> None:
        """Read the outbox figures /metrics serves (a scrape cannot await the store)."""
        try:
            self._outbox_stats = await self.stores.outbox.stats()
        except StoreError as exc:
            self._outbox_stats, self._outbox_stats_error = None, str(exc)

    def outbox_stats(self) -> OutboxStats:
        """Return the outbox figures as of the last dispatch tick or poll; raise StoreError if that read failed."""
        if self._outbox_stats is None:
            raise StoreError(self._outbox_stats_error)
        return self._outbox_stats

    async def prune(self) -> None:
        """Delete delivered rows and terminal actions older than RELAY_RETENTION."""
        try:
            now = time.time()
            older_than = now - self.settings.retention.total_seconds()
            deliveries = await self.stores.outbox.prune(older_than=older_than)
            actions = await self.stores.actions.prune(older_than=older_than)
            await self.stores.calls.prune(older_than=now - WINDOW_S)
        except StoreError as exc:
            log.error("prune.failed", caused_by=str(exc))
            return
        if deliveries or actions:
            log.info("prune.completed", deliveries=deliveries, actions=actions)

    async def stop(self, *, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop scheduling and claiming; let running polls and sends finish within the grace period; record their answers; close."""
        self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        sends = asyncio.create_task(self.dispatcher.stop(grace_s=grace_s))
        running = [t for t in self._tasks if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
        cut = await sends
        if cut:
            log.warning("relay.shutdown_cut", sends=cut, grace_s=grace_s, hint="sends unanswered within the grace period stay due and are sent again")
        unrecorded = await self.dispatcher.flush_unrecorded()
        if unrecorded:
            log.error("relay.results_unrecorded", rows=unrecorded, hint="the state database could not be written; these rows are sent once more after restart")
        await self._close_resources()
        log.info("relay.stopped")

    async def _close_resources(self) -> None:
        if self._health is not None:
            await self._health.close()
        for resource in reversed(self._opened):
            if isinstance(resource, aiohttp.ClientSession):
                await resource.close()
            else:
                await resource.close()
        self._opened.clear()
        self._lock.release()


def _now_dt() -> datetime:
    return datetime.now(tz=UTC)
