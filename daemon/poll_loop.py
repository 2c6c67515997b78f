"""One project's poll loop: run a cycle, settle its requests, decide when the next one runs.

The relay's scheduler calls :meth:`PollLoop.run_once`; it returns when the next poll
should run and whether the dispatcher has new rows, so nothing here schedules jobs or
calls back into the relay. Pacing is pure (:mod:`daemon.pacing`); this module only feeds
it the cycle's facts and persists what must outlive a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog

from daemon.arrivals import from_text, to_text
from daemon.budget import WINDOW_S
from daemon.cadence import Cadence
from daemon.errors import AuthError, BudgetExhaustedError, LeaseLostError, RateLimitedError, StoreError, VoucherifyError
from daemon.metrics import ProjectMetrics, failure_reason
from daemon.model import ActionSnapshot
from daemon.monthly import billing_cycle, counter_for, idle_interval_s, used_in
from daemon.pacing import AUTH_BACKOFF_S, CycleFacts, Pacing, auth_refused, deferred, started, succeeded, woken
from daemon.poller import Poller, PollReport
from daemon.settings import RelaySettings
from daemon.sinks import LiveSink
from daemon.store import OutboxStats, Stores
from daemon.store_health import StoreHealth
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.app")
BLOCKED_UNTIL = "api_blocked_until"  # a 429's Retry-After deadline, kept across restarts
CYCLE_CALLS = "api_calls_this_cycle"  # "<billing cycle start> <requests>", with RELAY_API_BUDGET_PER_MONTH
PACING_HISTORY = "pacing_history"  # progress pacing's learned arrivals and durations (daemon.arrivals.to_text)


@dataclass(frozen=True, slots=True)
class NextPoll:
    """What a cycle asks of the scheduler: when to poll next, and whether new rows wait in the outbox."""

    at: float | None  # None: keep the schedule (a failed cycle; the job's interval retries it)
    wake_dispatch: bool = False


def cadence_for(settings: RelaySettings) -> Cadence:
    """Return the pacing settings RELAY_PACING, RELAY_POLL_INTERVAL, RELAY_IDLE_POLL_INTERVAL and the hourly budget give."""
    return Cadence.of(pacing=settings.pacing, fast_s=settings.poll_interval, idle_s=settings.idle_poll_interval, budget_per_hour=settings.api_budget_per_hour)


def cycle_facts(report: PollReport, client: VoucherifyClient, *, idle_s: float | None = None, live_s: float | None = None) -> CycleFacts:
    """Return what pacing needs from a finished cycle and the API's last rate-limit headers."""
    return CycleFacts(
        in_flight=report.in_flight or int(report.backlog_window_s is not None),  # stay fast while a list backlog is owed
        transitions=report.transitions,
        first_run=report.first_run,
        remaining=client.rate_limit_remaining,
        limit=client.rate_limit_limit,
        observed=report.observed,
        backlog_owed=report.backlog_window_s is not None,
        idle_s=idle_s,
        seen=report.seen,
        live_s=live_s,
    )


class PollLoop:
    """Polls one Voucherify project: a cycle, its requests' bookkeeping, its pace."""

    def __init__(
        self,
        *,
        settings: RelaySettings,
        poller: Poller,
        client: VoucherifyClient,
        stores: Stores,
        metrics: ProjectMetrics,
        store_health: StoreHealth,
        clock: Callable[[], float],
        live_sinks: tuple[LiveSink, ...] = (),
        auth_backoff_s: tuple[float, float] = AUTH_BACKOFF_S,
    ) -> None:
        self._settings, self._poller, self._client, self._stores = settings, poller, client, stores
        self._metrics, self._store_health, self._clock, self._live_sinks = metrics, store_health, clock, live_sinks
        self._auth_backoff_s = auth_backoff_s
        self.cadence = cadence_for(settings)
        self.pacing = Pacing(interval_s=settings.poll_interval)
        self.last_poll: PollReport | None = None
        self.last_poll_ok_at: float | None = None
        self.started_at: float | None = None  # monotonic start of the running cycle, None between cycles
        self._saved_blocked_until = client.blocked_until  # the client starts from the stored deadline
        self._progress: asyncio.Future[None] | None = None

    def may_poll(self) -> bool:
        """Whether no back-off or Retry-After holds the next cycle."""
        return self.pacing.may_poll(self._clock())

    async def run_once(self, *, outbox: Callable[[], Awaitable[OutboxStats | None]]) -> NextPoll:
        """Run one cycle; log it; never raise. ``outbox`` reads the figures the cycle line shows, after the commit."""
        self.started_at = t0 = time.monotonic()
        self.pacing = started(self.pacing, now=self._clock())
        try:
            report = await self._poller.poll_once()
        except Exception as exc:  # noqa: BLE001 - one bad cycle never stops the daemon
            self._failed(exc)
            self._metrics.poll_failed(failure_reason(exc), duration_s=time.monotonic() - t0)
            return NextPoll(at=None)
        finally:
            self.started_at = None
            await self._settle_requests()
        self._store_health.write_error = None
        self.last_poll, self.last_poll_ok_at = report, self._clock()
        self._metrics.observe_poll(report, duration_s=time.monotonic() - t0)
        _log_cycle(report, client=self._client, outbox=await outbox(), duration_s=time.monotonic() - t0)
        next_at = await self._pace(report)
        self._push_progress(report)
        return NextPoll(at=next_at, wake_dispatch=bool(report.events))

    def watch(self, action_id: str) -> float:
        """Your application just started ``action_id``: return when to poll (wakes coalesce) and stay fast while it runs."""
        log.info("watch.requested", action_id=action_id)
        self.pacing, wake_at = woken(self.pacing, cadence=self.cadence, now=self._clock())
        return wake_at

    async def resume_shared_limits(self) -> None:
        """Start from the shared request log and Retry-After (a new leader), so the hourly budget holds across replicas.

        Progress pacing also resumes what the last leader had learned of arrivals and durations.
        """
        try:
            history = await self._stores.calls.since(self._clock() - WINDOW_S)
            blocked_until = float(await self._stores.actions.load_meta(BLOCKED_UNTIL) or 0)
            learned = from_text(await self._stores.actions.load_meta(PACING_HISTORY)) if self.cadence.pacing == "progress" else None
        except StoreError as exc:
            log.error("lease.resume_failed", caused_by=str(exc), hint="polls wait until the state database answers")
            return
        self._client.resume(history=history, blocked_until=blocked_until)
        self._saved_blocked_until = self._client.blocked_until
        if learned is not None:
            self.pacing = replace(self.pacing, history=learned)

    async def _settle_requests(self) -> None:
        """Count the cycle's requests, and persist what must outlive a restart: their times (budgets) and a Retry-After."""
        self._metrics.observe_api_calls(self._client.calls)
        self._metrics.set_rate_limit_remaining(self._client.rate_limit_remaining)
        sent = self._client.take_sent()
        try:
            if sent and self._settings.api_budget_per_hour:
                await self._stores.calls.record(sent)
            if sent and self._settings.api_budget_per_month:
                await self._count_cycle_calls(len(sent))
            if self._client.blocked_until > self._saved_blocked_until:
                await self._stores.actions.save_meta(BLOCKED_UNTIL, f"{self._client.blocked_until:.3f}")
                self._saved_blocked_until = self._client.blocked_until
        except StoreError as exc:
            log.error("poll.store_failed", caused_by=str(exc))

    def _failed(self, exc: Exception) -> None:
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
            log.warning("poll.fenced", caused_by=str(exc), hint="the lease passed on: this cycle's results were not committed")
        elif isinstance(exc, StoreError):
            self._store_health.write_error = str(exc)
            log.error("poll.store_failed", caused_by=str(exc))
        else:
            log.error("poll.crashed", exc_info=exc)

    async def _count_cycle_calls(self, sent: int) -> None:
        """Add ``sent`` requests to this billing cycle's counter (a meta row: one read, one write)."""
        cycle = billing_cycle(self._clock(), cycle_day=self._settings.billing_cycle_day)
        used = used_in(await self._stores.actions.load_meta(CYCLE_CALLS), cycle) + sent
        await self._stores.actions.save_meta(CYCLE_CALLS, counter_for(cycle, used))

    async def _monthly_idle_s(self, now: float) -> float | None:
        """Return the idle interval RELAY_API_BUDGET_PER_MONTH allows now, or None without one."""
        budget = self._settings.api_budget_per_month
        if budget is None:
            return None
        cycle = billing_cycle(now, cycle_day=self._settings.billing_cycle_day)
        try:
            used = used_in(await self._stores.actions.load_meta(CYCLE_CALLS), cycle)
        except StoreError as exc:
            log.error("poll.store_failed", caused_by=str(exc))
            return self.cadence.idle_s
        return idle_interval_s(budget=budget, used=used, now=now, cycle=cycle, fast_s=self.cadence.fast_s)

    async def _pace(self, report: PollReport) -> float:
        """Return when the next poll runs per RELAY_PACING, never faster than the budgets allow."""
        now, before, learned = self._clock(), self.pacing.reason, self.pacing.history
        live_s = self._settings.live_progress_interval if self._live_sinks else None
        facts = cycle_facts(report, self._client, idle_s=await self._monthly_idle_s(now), live_s=live_s)
        self.pacing, decision = succeeded(self.pacing, facts, cadence=self.cadence, now=now)
        if decision.reason != before:
            _log_pace(decision.reason, decision.interval_s, client=self._client)
        if self.pacing.history != learned:
            await self._save_history()
        return now + decision.interval_s

    async def _save_history(self) -> None:
        """Keep what pacing has learned with the project's state, for a restart or the next leader (best-effort)."""
        try:
            await self._stores.actions.save_meta(PACING_HISTORY, to_text(self.pacing.history))
        except StoreError as exc:
            log.error("poll.store_failed", caused_by=str(exc), hint="pacing's learning is kept in memory only")

    def cancel_progress(self) -> None:
        """Drop a progress update still running (shutdown: progress is best-effort)."""
        if self._progress is not None:
            self._progress.cancel()

    def _push_progress(self, report: PollReport) -> None:
        """Hand the cycle's in-flight progress to the live sinks, on a task: best-effort, never delaying polls."""
        if not self._live_sinks or not report.in_flight_snapshots or (self._progress is not None and not self._progress.done()):
            return
        self._progress = asyncio.ensure_future(_update_live(self._live_sinks, report.in_flight_snapshots, project=self._poller.project))


async def _update_live(sinks: tuple[LiveSink, ...], snapshots: tuple[ActionSnapshot, ...], *, project: str) -> None:
    for sink in sinks:
        try:
            await sink.update_progress(snapshots, project=project)
        except Exception as exc:  # noqa: BLE001 - progress is best-effort; the final state goes through the outbox
            log.warning("progress.failed", sink=sink.name, caused_by=repr(exc))


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
