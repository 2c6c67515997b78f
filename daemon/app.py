"""The running daemon: APScheduler jobs (poll, dispatch, prune), the health listener, a clean stop.

``Relay`` runs and stops what :func:`daemon.bootstrap.build_relay` gave it; it builds
nothing. It runs one :class:`~daemon.project_runner.ProjectRunner` per Voucherify project,
each on its own scheduler job (``poll:<project>``). Data flows one way: the poller's cycle
commits its events and returns them in its report; :class:`~daemon.poll_loop.PollLoop`
counts, logs and paces from that report and tells the relay when to poll that project
next; :class:`~daemon.lease_keeper.LeaseKeeper` keeps the project's polling lease. The
dispatcher, the outbox and the health listener are shared by all projects.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.budget import WINDOW_S
from daemon.elector import Elector
from daemon.errors import StoreError
from daemon.health import HealthServer
from daemon.lease import LeaseStore
from daemon.lock import InstanceLock
from daemon.metrics import RelayMetrics
from daemon.outbox import Dispatcher
from daemon.pacing import AUTH_BACKOFF_S, Pacing
from daemon.poll_loop import PollLoop
from daemon.poller import PollReport
from daemon.project_runner import ProjectParts, ProjectRunner, log_project_started, pick_project
from daemon.readiness import all_ready, liveness
from daemon.settings import RelaySettings
from daemon.sinks import LiveSink, Sink
from daemon.spread import Spreader
from daemon.store import Stores
from daemon.store_health import OutboxFigures, StoreHealth
from daemon.urls import parse_listen
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.app")
DISPATCH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
SHUTDOWN_GRACE_S = 20.0


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything a relay runs, built by the composition root."""

    settings: RelaySettings
    clock: Callable[[], float]
    lock: InstanceLock | None  # SQLite only: one relay per file
    stores: Stores
    session: aiohttp.ClientSession
    sinks: Mapping[str, Sink]
    projects: tuple[ProjectParts, ...]  # one per Voucherify project, ``default`` first when configured
    lease_store: LeaseStore  # shared by the projects' electors; closed once
    dispatcher: Dispatcher
    metrics: RelayMetrics
    live_sinks: tuple[LiveSink, ...] = ()  # sinks showing progress between events (Slack app)
    spreader: Spreader | None = None  # several projects on PostgreSQL: their leases spread over the replicas


class Relay:
    """Per-project poll jobs, dispatch and prune jobs on one event loop, the health listener, and a clean stop."""

    def __init__(self, parts: Parts, *, auth_backoff_s: tuple[float, float] = AUTH_BACKOFF_S) -> None:
        self._parts = parts
        self.settings, self.stores, self.metrics, self.dispatcher = parts.settings, parts.stores, parts.metrics, parts.dispatcher
        self._clock = parts.clock
        self.http_port: int | None = None
        self._scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._last_tick = time.monotonic()
        self._store_health = StoreHealth(parts.stores, parts.dispatcher)
        self._outbox = OutboxFigures(parts.stores)
        self._health: HealthServer | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self.projects = {
            p.name: ProjectRunner(
                p,
                metrics=parts.metrics,
                store_health=self._store_health,
                clock=parts.clock,
                live_sinks=parts.live_sinks,
                auth_backoff_s=auth_backoff_s,
                on_acquired=self._lead,
            )
            for p in parts.projects
        }
        first = next(iter(self.projects.values()))
        self.loop: PollLoop = first.loop  # the first project's: what single-project tests and tools read
        self.client: VoucherifyClient = first.client
        self.elector: Elector = first.elector

    @property
    def running(self) -> bool:
        """Whether the scheduler runs (False before start and after stop)."""
        return bool(self._scheduler.running) and not self._stopping

    @property
    def pacing(self) -> Pacing:
        """The poll scheduler's memory (read-only, for tests and diagnostics)."""
        return self.loop.pacing

    @property
    def last_poll(self) -> PollReport | None:
        """The last successful cycle's report."""
        return self.loop.last_poll

    @property
    def last_poll_ok_at(self) -> float | None:
        """When the last cycle succeeded (epoch seconds)."""
        return self.loop.last_poll_ok_at

    async def start(self) -> None:
        """Start the listener, the jobs and the lease; on failure, close everything before the error propagates."""
        try:
            await self.dispatcher.start()
            await self._outbox.refresh()
            self.metrics.declare_sinks(self._parts.sinks)
            self.metrics.watch(outbox_stats=self._outbox.current, ready=self.ready)
            await self._start_health()
            await self._dead_letter_removed_projects()
            now = datetime.now(tz=UTC)
            for runner in self.projects.values():
                poll = self._guard(partial(self.poll_project, runner), name=runner.job_id)
                self._scheduler.add_job(poll, "interval", seconds=runner.settings.poll_interval, id=runner.job_id, next_run_time=now)
            for job, seconds in ((self.dispatch, DISPATCH_INTERVAL_S), (self.prune, PRUNE_INTERVAL_S)):
                self._scheduler.add_job(self._guard(job), "interval", seconds=seconds, id=job.__name__, next_run_time=now)
            self._scheduler.start()
            for runner in self.projects.values():
                runner.keeper.start()
            if self._parts.spreader is not None:
                keepers = {id(r.elector): r.keeper for r in self.projects.values()}
                self._parts.spreader.start([r.elector for r in self.projects.values()], hand_over=lambda e: keepers[id(e)].hand_over())
            if self.stores.wake is not None:
                self._wake_task = asyncio.create_task(self._follow_wakes(self.stores.wake), name="outbox-wake")
        except BaseException:
            await self._close()
            raise
        await _log_started(self._parts)

    async def _dead_letter_removed_projects(self) -> None:
        """Dead-letter pending rows of projects no longer configured (their pollers are gone; replay them once it is back)."""
        removed = await self.stores.outbox.dead_letter_unknown_projects(self.projects)
        if removed:
            log.error("outbox.orphaned_rows", count=removed, hint="their project was removed from the configuration; see `outbox list --dead`")

    async def _follow_wakes(self, wake: asyncio.Event) -> None:
        """Kick the dispatcher whenever the store says rows were enqueued (PostgreSQL's NOTIFY); the 1 s tick stays the fallback."""
        while True:
            await wake.wait()
            wake.clear()
            if not self._stopping:
                self.dispatcher.kick()

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
        started = [r.loop.started_at for r in self.projects.values() if r.loop.started_at is not None]
        return liveness(self._last_tick, now=time.monotonic(), scheduler_running=self.running, poll_started_at=min(started, default=None))

    def ready(self) -> tuple[bool, str]:
        """Whether every project polled recently with accepted keys (or, as a follower, reaches its lease) and the state database works (/readyz).

        A follower polls nothing: it is ready while its lease attempts reach the database.
        With several projects, the detail names each project that is not ready.
        """
        return all_ready({name: runner.ready(stopping=self._stopping) for name, runner in self.projects.items()})

    def _guard(self, job: Callable[[], Coroutine[Any, Any, None]], *, name: str | None = None) -> Callable[[], Coroutine[Any, Any, None]]:
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

        run.__name__ = name or str(getattr(job, "__name__", "job"))
        return run

    async def poll(self) -> None:
        """Run one poll cycle of every project this replica leads (tests and tools; the scheduler polls each project on its own job)."""
        for runner in self.projects.values():
            await self.poll_project(runner)

    async def poll_project(self, runner: ProjectRunner) -> None:
        """Run one cycle of ``runner``'s project if this replica leads it and nothing holds it back; schedule what it asks for."""
        if not runner.may_poll() or self._store_health.file_gone():
            return
        asked = await runner.run_once(outbox=self._outbox.refresh)
        if asked.at is not None:
            self._schedule(runner.job_id, asked.at)
        if asked.wake_dispatch:
            self._schedule("dispatch", self._clock())

    async def _lead(self, runner: ProjectRunner) -> None:
        self._schedule(runner.job_id, self._clock())

    def watch(self, action_id: str, project: str | None = None) -> tuple[int, str] | None:
        """Your application just started ``action_id``: poll its project soon and stay fast while it runs (wakes coalesce).

        Return why not, as an HTTP status and a detail: 400 for an unknown project (or none named
        while several are configured), 503 when this replica does not poll that project; else None.
        """
        runner, refused = pick_project(self.projects, project)
        if runner is None:
            return 400, refused
        if not runner.elector.trusted():
            leader = f'voucherify_relay_leader{{project="{runner.name}"}} is 1'
            return 503, f"replica {self.settings.replica_id} does not poll project {runner.name} now: send it to the replica where {leader}"
        with structlog.contextvars.bound_contextvars(project=runner.name):
            self._schedule(runner.job_id, runner.loop.watch(action_id), only_sooner=True)
        return None

    def _schedule(self, job_id: str, at: float, *, only_sooner: bool = False) -> None:
        job = self._scheduler.get_job(job_id)
        when = datetime.fromtimestamp(at, tz=UTC)
        if job is not None and not (only_sooner and job.next_run_time is not None and job.next_run_time <= when):
            # the scheduler wakes through call_soon, which copies the caller's context: start from an empty
            # one, so a project bound to this caller's log lines never leaks into the jobs it wakes
            contextvars.Context().run(job.modify, next_run_time=when)

    async def dispatch(self) -> None:
        """Start draining sinks with due deliveries; each drains on its own task."""
        self._last_tick = time.monotonic()
        if not self._store_health.file_gone():
            self.dispatcher.kick()
            await self._outbox.refresh()

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
        running = [t for t in self._tasks if not t.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
        await asyncio.gather(*(runner.keeper.stop() for runner in self.projects.values()))
        if self._parts.spreader is not None:
            await self._parts.spreader.stop()
        cut = await sends
        if cut:
            log.warning("relay.shutdown_cut", sends=cut, grace_s=grace_s, hint="sends unanswered within the grace period stay due and are sent again")
        unrecorded = await self.dispatcher.flush_unrecorded()
        if unrecorded:
            log.error("relay.results_unrecorded", rows=unrecorded, hint="the state database could not be written; these rows are sent once more after restart")
        await self._close()
        log.info("relay.stopped")

    async def _close(self) -> None:
        for runner in self.projects.values():
            runner.loop.cancel_progress()
        if self._wake_task is not None:
            self._wake_task.cancel()
            self._wake_task = None
        if self._health is not None:
            await self._health.close()
            self._health = None
        await self._parts.session.close()
        await self._parts.lease_store.close()
        await self.stores.close()
        if self._parts.lock is not None:
            self._parts.lock.release()  # after the store: closing the lock's handle drops this process's locks on the file


async def _log_started(parts: Parts) -> None:
    settings = parts.settings
    log.info(
        "relay.started",
        replica=settings.replica_id,
        projects=[p.name for p in parts.projects],
        api_budget_per_month=settings.api_budget_per_month,
        pacing=settings.pacing,
        state=settings.state_display(),
        sinks={name: sink.describe() for name, sink in parts.sinks.items()},
    )
    for project in parts.projects:
        await log_project_started(project)
