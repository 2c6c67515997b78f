"""Whether the state database still works: its file is the one opened, and writes succeed."""

from __future__ import annotations

import structlog

from daemon.errors import StoreError
from daemon.outbox import Dispatcher
from daemon.store import OutboxStats, Stores

log = structlog.get_logger("daemon.app")


class StoreHealth:
    """Whether the state database still works: its file is the one opened, and writes succeed."""

    def __init__(self, stores: Stores, dispatcher: Dispatcher) -> None:
        self._stores = stores
        self._dispatcher = dispatcher
        self._file_problem: str | None = None
        self.write_error: str | None = None  # the last poll commit's failure, cleared by the next success

    def problem(self) -> str | None:
        """Return why the store does not work, or None."""
        if self.file_gone():
            return f"{self._file_problem}; polling and deliveries stopped: restore it or restart the relay"
        cause = self.write_error or self._dispatcher.store_failure()
        return None if cause is None else f"cannot write the state database ({cause})"

    def file_gone(self) -> bool:
        """Whether the database file was deleted or replaced under us (logged once; it stays so until restart)."""
        if self._file_problem is None and (problem := self._stores.file_problem()) is not None:
            self._file_problem = problem
            log.error("store.file_replaced", path=self._stores.location, problem=problem, hint="polling and deliveries stop; restart the relay")
        return self._file_problem is not None


class OutboxFigures:
    """The outbox depth /metrics serves: a scrape cannot await the store, so it reads the last refresh."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._stats: OutboxStats | None = None
        self._error = "not read yet"

    async def refresh(self) -> OutboxStats | None:
        """Read the figures now (every dispatch tick and poll); return them, or None if the read failed."""
        try:
            self._stats = await self._stores.outbox.stats()
        except StoreError as exc:
            self._stats, self._error = None, str(exc)
        return self._stats

    def current(self) -> OutboxStats:
        """Return the last figures read; raise StoreError if that read failed (the scrape drops the outbox gauges)."""
        if self._stats is None:
            raise StoreError(self._error)
        return self._stats
