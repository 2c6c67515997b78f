"""The task that keeps trying for, renewing and handing over the polling lease (see :mod:`daemon.elector`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from daemon.elector import Elector
from daemon.errors import StoreError
from daemon.leadership import Change
from daemon.metrics import ProjectMetrics
from daemon.model import DEFAULT_PROJECT

log = structlog.get_logger("daemon.app")


class LeaseKeeper:
    """Runs the lease attempts until stopped, logs and counts each change, releases on stop."""

    def __init__(self, elector: Elector, metrics: ProjectMetrics, *, on_acquired: Callable[[], Awaitable[None]], project: str = DEFAULT_PROJECT) -> None:
        self._elector = elector
        self._metrics = metrics
        self._project = project
        self._on_acquired = on_acquired  # a new leader resumes the shared limits and polls at once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the attempts on a task of their own."""
        self._metrics.set_leadership(leader=False, term=None)
        self._task = asyncio.create_task(self._run(), name=f"lease-{self._project}")

    async def _run(self) -> None:
        structlog.contextvars.bind_contextvars(project=self._project)  # this task's own context
        while True:
            try:
                await self._changed(await self._elector.attempt())
            except Exception as exc:
                log.error("lease.crashed", exc_info=exc)
            await self._elector.wait()

    async def _changed(self, change: Change) -> None:
        replica = self._elector.holder
        if change.kind == "acquired":
            log.info("lease.acquired", replica=replica, term=change.term)
            await self._on_acquired()
        elif change.kind == "lost":
            log.warning("lease.lost", replica=replica, term=change.term, reason=change.reason, caused_by=self._elector.last_error)
        self._metrics.set_leadership(leader=self._elector.standing.term is not None, term=change.term)

    async def hand_over(self) -> None:
        """Give the lease up now so a replica with fewer projects takes it (spreading; the attempts go on as a follower)."""
        await self._release("lease.handed_over", reason="spreading projects over the replicas")

    async def stop(self) -> None:
        """Stop the attempts and hand the lease over now (a rolling update takes seconds, not a TTL)."""
        if self._task is not None:
            self._task.cancel()
        await self._release("lease.released")

    async def _release(self, event: str, **fields: str) -> None:
        with structlog.contextvars.bound_contextvars(project=self._project):
            try:
                term = await self._elector.release()
            except StoreError as exc:
                log.warning("lease.release_failed", caused_by=str(exc), hint="another replica takes over when the lease expires")
                return
            self._metrics.set_leadership(leader=False, term=term)
            if term is not None:
                log.info(event, replica=self._elector.holder, term=term, **fields)
