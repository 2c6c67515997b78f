"""The running daemon: APScheduler jobs (poll, dispatch, prune), the health listener, a clean stop.

``Relay`` runs and stops what :func:`daemon.bootstrap.build_relay` gave it; it builds
nothing. Data flows one way: the poller's cycle commits its events and returns them in
its report; the relay only counts, logs and paces from that report (:mod:`daemon.pacing`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.budget import WINDOW_S
from daemon.cadence import Cadence
from daemon.elector import Elector
from daemon.errors import AuthError, BudgetExhaustedError, LeaseLostError, RateLimitedError, StoreError, VoucherifyError
from daemon.health import HealthServer
from daemon.leadership import Change
from daemon.lock import InstanceLock
from daemon.metrics import RelayMetrics, failure_reason
from daemon.model import ActionSnapshot
from daemon.monthly import billing_cycle, counter_for, idle_interval_s, used_in
from daemon.outbox import Dispatcher
from daemon.pacing import AUTH_BACKOFF_S, CycleFacts, Pacing, auth_refused, deferred, started, succeeded, woken
from daemon.poller import Poller, PollReport
from daemon.readiness import follower_readiness, liveness, readiness
from daemon.settings import RelaySettings
from daemon.sinks import LiveSink, Sink
from daemon.store import OutboxStats, Stores
from daemon.store_health import StoreHealth
from daemon.urls import parse_listen
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.app")
DISPATCH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
SHUTDOWN_GRACE_S = 20.0
BLOCKED_UNTIL = "api_blocked_until"  # a 429's Retry-After deadline, kept across restarts
CYCLE_CALLS = "api_calls_this_cycle"  # "<billing cycle start> <requests>", with RELAY_API_BUDGET_PER_MONTH


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything a relay runs, built by the composition root."""

    settings: RelaySettings
    clock: Callable[[], float]
    lock: InstanceLock | None  # SQLite only: one relay per file
    stores: Stores
    session: aiohttp.ClientSession
    client: VoucherifyClient
    sinks: Mapping[str, Sink]
    poller: Poller
    dispatcher: Dispatcher
    metrics: RelayMetrics
    elector: Elector
    live_sinks: tuple[LiveSink, ...] = ()  # sinks showing progress between events (Slack app)


class Relay:
    """Poll and dispatch jobs on one event loop, and their health."""

    def __init__(self, parts: Parts, *, auth_backoff_s: tuple[float, float] = AUTH_BACKOFF_S) -> None:
        self._parts = parts
        self.settings, self.stores, self.client, self.metrics = parts.settings, parts.stores, parts.client, parts.metrics
        self.dispatcher = parts.dispatcher
        self._clock = parts.clock
        self._auth_backoff_s = auth_backoff_s
        self.cadence = cadence_for(self.settings)
        self.pacing = Pacing(interval_s=self.settings.poll_interval)
        self.last_poll: PollReport | None = None
        self.last_poll_ok_at: float | None = None
        self.http_port: int | None = None
        self._scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._last_tick = time.monotonic()
        self._poll_started: float | None = None
        self._store_health = StoreHealth(parts.stores, parts.dispatcher)
        self._health: HealthServer | None = None
        self._outbox_stats: OutboxStats | None = None
        self._outbox_stats_error = "not read yet"
        self._saved_blocked_until = parts.client.blocked_until  # the client starts from the stored deadline
        self._progress: asyncio.Future[None] | None = None
        self.elector = parts.elector
        self._leading: asyncio.Task[None] | None = None
        self._wake_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the scheduler runs (False before start and after stop)."""
        return bool(self._scheduler.running) and not self._stopping

    async def start(self) -> None:
        """Start the listener and the jobs; on failure, close everything before the error propagates."""
        try:
            await self.dispatcher.start()
            await self._refresh_outbox_stats()
            self.metrics.declare_sinks(self._parts.sinks)
            self.metrics.watch(outbox_stats=self.outbox_stats, ready=self.ready)
            await self._start_health()
            now = datetime.now(tz=UTC)
            for job, seconds in ((self.poll, self.settings.poll_interval), (self.dispatch, DISPATCH_INTERVAL_S), (self.prune, PRUNE_INTERVAL_S)):
                self._scheduler.add_job(self._guard(job), "interval", seconds=seconds, id=job.__name__, next_run_time=now)
            self._scheduler.start()
            self.metrics.set_leadership(leader=False, term=None)
            self._leading = asyncio.create_task(self._lead(), name="lease")
            self._start_wake()
        except BaseException:
            await self._close()
            raise
        _log_started(self._parts, first_run=(await self.stores.actions.load_cursor()).first_run)

    def _start_wake(self) -> None:
        """Kick the dispatcher whenever the store says rows were enqueued (PostgreSQL's NOTIFY); the 1 s tick stays the fallback."""
        wake = self.stores.wake
        if wake is None:
            return

        async def follow() -> None:
            while True:
                await wake.wait()
                wake.clear()
                if not self._stopping:
                    self.dispatcher.kick()

        self._wake_task = asyncio.create_task(follow(), name="outbox-wake")

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
        return liveness(self._last_tick, now=time.monotonic(), scheduler_running=self.running, poll_started_at=self._poll_started)

    def ready(self) -> tuple[bool, str]:
        """Whether a poll succeeded recently, the keys are accepted and the state database works (for /readyz).

        A follower polls nothing: it is ready while its lease attempts reach the database.
        """
        if self.elector.standing.term is None:
            ok_at = self.elector.last_ok_at
            age_s = None if ok_at is None else time.monotonic() - ok_at
            return follower_readiness(age_s, max_age_s=self.elector.timing.ttl_s, lease_error=self.elector.last_error, stopping=self._stopping)
        return readiness(
            self.last_poll_ok_at,
            now=self._clock(),
            poll_interval_s=max(self.settings.poll_interval, self.pacing.interval_s),
            auth_failed=self.pacing.auth_failures > 0,
            stopping=self._stopping,
            store_problem=self._store_health.problem(),
        )

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
        """Run one poll cycle; log its outcome; pace the next one; never raise."""
        now = self._clock()
        if not self.elector.trusted() or not self.pacing.may_poll(now) or self._store_health.file_gone():
            return
        self._poll_started = t0 = time.monotonic()
        self.pacing = started(self.pacing, now=now)
        try:
            report = await self._parts.poller.poll_once()
        except Exception as exc:  # noqa: BLE001 - one bad cycle never stops the daemon
            self._poll_failed(exc)
            self.metrics.poll_failed(failure_reason(exc), duration_s=time.monotonic() - t0)
            return
        finally:
            self._poll_started = None
            await self._settle_requests()
        self._store_health.write_error = None
        self.last_poll, self.last_poll_ok_at = report, self._clock()
        self.metrics.observe_poll(report, duration_s=time.monotonic() - t0)
        await self._refresh_outbox_stats()
        _log_cycle(report, client=self.client, outbox=self._outbox_stats, duration_s=time.monotonic() - t0)
        await self._pace(report)
        if report.events:
            self._schedule("dispatch", self._clock())
        self._push_progress(report)

    def _push_progress(self, report: PollReport) -> None:
        """Hand the cycle's in-flight progress to the live sinks, on a task: best-effort, never delaying polls."""
        if not self._parts.live_sinks or not report.in_flight_snapshots or (self._progress is not None and not self._progress.done()):
            return
        sinks, snapshots = self._parts.live_sinks, report.in_flight_snapshots

        async def update_live() -> None:
            await _update_live(sinks, snapshots)

        self._progress = asyncio.ensure_future(self._guard(update_live)())

    async def _settle_requests(self) -> None:
        """Count the cycle's requests, and persist what must outlive a restart: their times (budget) and a Retry-After."""
        self.metrics.observe_api_calls(self.client.calls)
        self.metrics.set_rate_limit_remaining(self.client.rate_limit_remaining)
        sent = self.client.take_sent()
        try:
            if sent and self.settings.api_budget_per_hour:
                await self.stores.calls.record(sent)
            if sent and self.settings.api_budget_per_month:
                await self._count_cycle_calls(len(sent))
            if self.client.blocked_until > self._saved_blocked_until:
                await self.stores.actions.save_meta(BLOCKED_UNTIL, f"{self.client.blocked_until:.3f}")
                self._saved_blocked_until = self.client.blocked_until
        except StoreError as exc:
            log.error("poll.store_failed", caused_by=str(exc))

    def _poll_failed(self, exc: Exception) -> None:
        now = self._clock()
        if isinstance(exc, AuthError):
            self.pacing = auth_refused(self.pacing, now=now, backoff_s=self._auth_backoff_s)
            log.error("poll.auth_failed", caused_by=str(exc), retry_in_s=round(self.pacing.resume_at - now, 3), failures=self.pacing.auth_failures)
        elif isinstance(exc, (RateLimitedError, BudgetExhaustedError)):
            self.pacing = deferred(self.pacing, retry_at=exc.retry_at)
            log.warning("poll.deferred", caused_by=str(exc), resume_in_s=round(exc.retry_at - now, 1))
        elif isinstance(exc, VoucherifyError):
            log.warning("poll.failed", caused_by=str(exc), hint="retried next cycle")
        elif isinstance(exc, LeaseLostError):
            log.warning("poll.fenced", replica=self.elector.holder, caused_by=str(exc), hint="the lease passed on: this cycle's results were not committed")
        elif isinstance(exc, StoreError):
            self._store_health.write_error = str(exc)
            log.error("poll.store_failed", caused_by=str(exc))
        else:
            log.error("poll.crashed", exc_info=exc)

    async def _count_cycle_calls(self, sent: int) -> None:
        """Add ``sent`` requests to this billing cycle's counter (a meta row: one read, one write)."""
        cycle = billing_cycle(self._clock(), cycle_day=self.settings.billing_cycle_day)
        used = used_in(await self.stores.actions.load_meta(CYCLE_CALLS), cycle) + sent
        await self.stores.actions.save_meta(CYCLE_CALLS, counter_for(cycle, used))

    async def _monthly_idle_s(self, now: float) -> float | None:
        """Return the idle interval RELAY_API_BUDGET_PER_MONTH allows now, or None without one."""
        budget = self.settings.api_budget_per_month
        if budget is None:
            return None
        cycle = billing_cycle(now, cycle_day=self.settings.billing_cycle_day)
        try:
            used = used_in(await self.stores.actions.load_meta(CYCLE_CALLS), cycle)
        except StoreError as exc:
            log.error("poll.store_failed", caused_by=str(exc))
            return self.cadence.idle_s
        return idle_interval_s(budget=budget, used=used, now=now, cycle=cycle, fast_s=self.cadence.fast_s)

    async def _pace(self, report: PollReport) -> None:
        """Schedule the next poll per RELAY_PACING, never faster than the budgets allow."""
        now, before = self._clock(), self.pacing.reason
        facts = CycleFacts(
            in_flight=report.in_flight or int(report.backlog_window_s is not None),  # stay fast while a list backlog is owed
            transitions=report.transitions,
            first_run=report.first_run,
            remaining=self.client.rate_limit_remaining,
            limit=self.client.rate_limit_limit,
            observed=report.observed,
            backlog_owed=report.backlog_window_s is not None,
            idle_s=await self._monthly_idle_s(now),
        )
        self.pacing, decision = succeeded(self.pacing, facts, cadence=self.cadence, now=now)
        if decision.reason != before:
            _log_pace(decision.reason, decision.interval_s, client=self.client)
        self._schedule("poll", now + decision.interval_s)

    async def _lead(self) -> None:
        """Try for, renew or lose the polling lease until stopped (never raises)."""
        while not self._stopping:
            try:
                await self._lease_changed(await self.elector.attempt())
            except Exception as exc:
                log.error("lease.crashed", exc_info=exc)
            await asyncio.sleep(self.elector.pause_s())

    async def _lease_changed(self, change: Change) -> None:
        replica = self.elector.holder
        if change.kind == "acquired":
            log.info("lease.acquired", replica=replica, term=change.term)
            await self._resume_shared_limits()
            self._schedule("poll", self._clock())
        elif change.kind == "lost":
            log.warning("lease.lost", replica=replica, term=change.term, reason=change.reason, caused_by=self.elector.last_error)
        self.metrics.set_leadership(leader=self.elector.standing.term is not None, term=change.term)

    async def _resume_shared_limits(self) -> None:
        """Start from the shared request log and Retry-After, so the hourly budget holds across replicas."""
        try:
            now = self._clock()
            history = await self.stores.calls.since(now - WINDOW_S)
            blocked_until = float(await self.stores.actions.load_meta(BLOCKED_UNTIL) or 0)
        except StoreError as exc:
            log.error("lease.resume_failed", caused_by=str(exc), hint="polls wait until the state database answers")
            return
        self.client.resume(history=history, blocked_until=blocked_until)
        self._saved_blocked_until = self.client.blocked_until

    def watch(self, action_id: str) -> None:
        """Your application just started ``action_id``: poll soon and stay fast while it runs (wakes coalesce)."""
        log.info("watch.requested", action_id=action_id)
        self.pacing, wake_at = woken(self.pacing, cadence=self.cadence, now=self._clock())
        self._schedule("poll", wake_at, only_sooner=True)

    def _schedule(self, job_id: str, at: float, *, only_sooner: bool = False) -> None:
        job = self._scheduler.get_job(job_id)
        when = datetime.fromtimestamp(at, tz=UTC)
        if job is not None and not (only_sooner and job.next_run_time is not None and job.next_run_time <= when):
            job.modify(next_run_time=when)

    async def dispatch(self) -> None:
        """Start draining sinks with due deliveries; each drains on its own task."""
        self._last_tick = time.monotonic()
        if not self._store_health.file_gone():
            self.dispatcher.kick()
            await self._refresh_outbox_stats()

    async def _refresh_outbox_stats(self) -> None:
        """Read the outbox figures /metrics and the cycle line serve (a scrape cannot await the store)."""
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
            now = self._clock()
            older_than = now - self.settings.retention.total_seconds()
            deliveries = await self.stores.outbox.prune(older_than=older_than)
            actions = await self.stores.actions.prune(older_than=older_than)
            await self.stores.messages.prune(older_than=older_than)
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
        if self._leading is not None:
            self._leading.cancel()
        running = [t for t in self._tasks if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
        await self._release_lease()
        cut = await sends
        if cut:
            log.warning("relay.shutdown_cut", sends=cut, grace_s=grace_s, hint="sends unanswered within the grace period stay due and are sent again")
        unrecorded = await self.dispatcher.flush_unrecorded()
        if unrecorded:
            log.error("relay.results_unrecorded", rows=unrecorded, hint="the state database could not be written; these rows are sent once more after restart")
        await self._close()
        log.info("relay.stopped")

    async def _release_lease(self) -> None:
        """Hand the lease over now (a rolling update takes seconds, not a TTL)."""
        try:
            term = await self.elector.release()
        except StoreError as exc:
            log.warning("lease.release_failed", caused_by=str(exc), hint="another replica takes over when the lease expires")
            return
        self.metrics.set_leadership(leader=False, term=term)
        if term is not None:
            log.info("lease.released", replica=self.elector.holder, term=term)

    async def _close(self) -> None:
        if self._wake_task is not None:
            self._wake_task.cancel()
            self._wake_task = None
        if self._health is not None:
            await self._health.close()
            self._health = None
        await self._parts.session.close()
        await self.elector.close()
        await self.stores.close()
        if self._parts.lock is not None:
            self._parts.lock.release()  # after the store: closing the lock's handle drops this process's locks on the file


def cadence_for(settings: RelaySettings) -> Cadence:
    """Return the pacing settings RELAY_PACING, RELAY_POLL_INTERVAL, RELAY_IDLE_POLL_INTERVAL and the hourly budget give."""
    return Cadence.of(pacing=settings.pacing, fast_s=settings.poll_interval, idle_s=settings.idle_poll_interval, budget_per_hour=settings.api_budget_per_hour)


async def _update_live(sinks: tuple[LiveSink, ...], snapshots: tuple[ActionSnapshot, ...]) -> None:
    for sink in sinks:
        try:
            await sink.update_progress(snapshots)
        except Exception as exc:  # noqa: BLE001 - progress is best-effort; the final state goes through the outbox
            log.warning("progress.failed", sink=sink.name, caused_by=repr(exc))


def _log_started(parts: Parts, *, first_run: bool) -> None:
    settings = parts.settings
    log.info(
        "relay.started",
        replica=settings.replica_id,
        api_url=settings.voucherify_api_url,
        poll_interval_s=settings.poll_interval,
        idle_poll_interval_s=settings.idle_poll_interval,
        api_budget_per_hour=settings.api_budget_per_hour,
        api_budget_per_month=settings.api_budget_per_month,
        pacing=settings.pacing,
        state=settings.state_display(),
        sinks={name: sink.describe() for name, sink in parts.sinks.items()},
        first_run=first_run,
        backfill_s=settings.backfill.total_seconds() if settings.backfill else None,
    )


def _log_cycle(report: PollReport, *, client: VoucherifyClient, outbox: OutboxStats | None, duration_s: float) -> None:
    log.info(
        "poll.completed",
        listed=report.listed,
        pages=report.pages,
        transitions=report.transitions,
        events=len(report.events),
        in_flight=report.in_flight,
        api_calls=report.api_calls,
        rate_limit_remaining=client.rate_limit_remaining,
        outbox_pending=None if outbox is None else outbox.pending,
        dead_letters=None if outbox is None else outbox.dead,
        baseline=report.first_run or None,
        backlog_pages=report.backlog_pages or None,
        backlog_window_s=None if report.backlog_window_s is None else round(report.backlog_window_s, 1),
        backlog_pages_owed=report.backlog_pages_owed,
        duration_ms=round(duration_s * 1000, 1),
    )


def _log_pace(reason: str, interval_s: float, *, client: VoucherifyClient) -> None:
    if reason == "progress":
        log.debug("poll.pace", mode=reason, interval_s=round(interval_s, 1))
    elif reason == "budget":
        hint = "RELAY_API_BUDGET_PER_HOUR spreads polls evenly; raise it for faster detection"
        log.warning("poll.budget_binding", interval_s=round(interval_s, 1), hint=hint)
    elif reason == "rate_limit":
        hint = "slowing down to leave headroom for your application"
        log.warning("poll.rate_limit_low", interval_s=interval_s, remaining=client.rate_limit_remaining, limit=client.rate_limit_limit, hint=hint)
    else:
        log.info("poll.pace", mode=reason, interval_s=interval_s)
