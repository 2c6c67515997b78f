"""One Voucherify project's polling side: its poll loop, its lease keeper, its client.

A relay runs one :class:`ProjectRunner` per configured project (``RELAY_PROJECTS__<NAME>__*``,
or ``default`` for the single-project variables). Each has its own client (credentials,
back-off, Retry-After, hourly budget), its own pacing, its own lease and its own scheduler
job, so one project's 401, 429 or timeouts never hold up another's polls. Everything it
logs carries ``project``; its metrics carry the ``project`` label.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from daemon.elector import Elector
from daemon.lease_keeper import LeaseKeeper
from daemon.metrics import RelayMetrics
from daemon.pacing import AUTH_BACKOFF_S
from daemon.poll_loop import NextPoll, PollLoop
from daemon.poller import Poller
from daemon.readiness import follower_readiness, readiness
from daemon.settings import RelaySettings
from daemon.sinks import LiveSink
from daemon.store import OutboxStats, Stores
from daemon.store_health import StoreHealth
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.app")


@dataclass(frozen=True, slots=True)
class ProjectParts:
    """What the composition root builds for one project."""

    name: str
    settings: RelaySettings  # the global settings with this project's credentials, pace and budget (RelaySettings.for_project)
    stores: Stores  # the ports with this project's action store and call log
    client: VoucherifyClient
    poller: Poller
    elector: Elector


class ProjectRunner:
    """Polls one project while this replica holds its lease."""

    def __init__(
        self,
        parts: ProjectParts,
        *,
        metrics: RelayMetrics,
        store_health: StoreHealth,
        clock: Callable[[], float],
        live_sinks: tuple[LiveSink, ...] = (),
        auth_backoff_s: tuple[float, float] = AUTH_BACKOFF_S,
        on_acquired: Callable[[ProjectRunner], Awaitable[None]],
    ) -> None:
        self.name, self.settings, self.client, self.elector = parts.name, parts.settings, parts.client, parts.elector
        self.metrics = metrics.project(parts.name)
        self._clock = clock
        self._store_health = store_health
        self.loop = PollLoop(
            settings=parts.settings,
            poller=parts.poller,
            client=parts.client,
            stores=parts.stores,
            metrics=self.metrics,
            store_health=store_health,
            clock=clock,
            live_sinks=live_sinks,
            auth_backoff_s=auth_backoff_s,
        )
        self.keeper = LeaseKeeper(parts.elector, self.metrics, on_acquired=self._acquired, project=parts.name)
        self._on_acquired = on_acquired

    @property
    def job_id(self) -> str:
        """The scheduler job that polls this project."""
        return f"poll:{self.name}"

    async def _acquired(self) -> None:
        await self.loop.resume_shared_limits()
        await self._on_acquired(self)

    def may_poll(self) -> bool:
        """Whether this replica holds the project's lease and no back-off holds its next cycle."""
        return self.elector.trusted() and self.loop.may_poll()

    async def run_once(self, *, outbox: Callable[[], Awaitable[OutboxStats | None]]) -> NextPoll:
        """Run one cycle with ``project`` bound to every log line it writes."""
        with structlog.contextvars.bound_contextvars(project=self.name):
            return await self.loop.run_once(outbox=outbox)

    def ready(self, *, stopping: bool) -> tuple[bool, str]:
        """Whether this project polls fine (as leader) or reaches its lease (as follower)."""
        if self.elector.standing.term is None:
            ok_at = self.elector.last_ok_at
            age_s = None if ok_at is None else time.monotonic() - ok_at
            return follower_readiness(age_s, max_age_s=self.elector.timing.ttl_s, lease_error=self.elector.last_error, stopping=stopping)
        return readiness(
            self.loop.last_poll_ok_at,
            now=self._clock(),
            poll_interval_s=max(self.settings.poll_interval, self.loop.pacing.interval_s),
            auth_failed=self.loop.pacing.auth_failures > 0,
            stopping=stopping,
            store_problem=self._store_health.problem(),
        )


def pick_project(runners: Mapping[str, ProjectRunner], project: str | None) -> tuple[ProjectRunner | None, str]:
    """Return the runner ``POST /watch`` means (the only one when no project is named), or None and why not."""
    configured = ", ".join(runners)
    if project is None and len(runners) > 1:
        return None, f'name the project: {{"action_id": "...", "project": "{next(iter(runners))}"}} (configured: {configured})'
    runner = next(iter(runners.values())) if project is None else runners.get(project)
    return runner, "" if runner is not None else f"no project {str(project)[:40]!r} is configured (configured: {configured})"


async def log_project_started(project: ProjectParts) -> None:
    """Log what one project polls and how (``project.started``)."""
    p = project.settings
    log.info(
        "project.started",
        project=project.name,
        api_url=p.voucherify_api_url,
        poll_interval_s=p.poll_interval,
        idle_poll_interval_s=p.idle_poll_interval,
        api_budget_per_hour=p.api_budget_per_hour,
        first_run=(await project.stores.actions.load_cursor()).first_run,
        backfill_s=p.backfill.total_seconds() if p.backfill else None,
    )
