"""OutboxListener: LISTEN relay_outbox on a dedicated connection, feeding an asyncio.Event.

A commit that enqueues rows (on any replica) notifies the channel; the event wakes this
replica's deliverers at once instead of at their next one-second tick. A LISTEN
connection can die without a word (a NAT timeout, a failover), so the listener sends a
ping whenever it has heard nothing for a while and reconnects with capped, jittered
backoff; the dispatcher's polling tick covers whatever is missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import psycopg
import structlog

from daemon.store.postgres_actions import NOTIFY_CHANNEL
from daemon.store.postgres_db import PostgresDatabase, configure_session, connection_options

log = structlog.get_logger("daemon.store")
PING_AFTER_S = 15.0
BACKOFF_S = (0.5, 30.0)


class OutboxListener:
    """Keeps one LISTEN connection alive and sets ``wake`` on every notification."""

    def __init__(self, database: PostgresDatabase, *, ping_after_s: float = PING_AFTER_S) -> None:
        self._database = database
        self._ping_after_s = ping_after_s
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._run(), name="outbox-listen")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                log.warning("store.listen_lost", database=self._database.display, caused_by=self._database.scrub(str(exc).splitlines()[0]), retry_in_s=delay)
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not cryptography
            delay = min(BACKOFF_S[1], delay * 2)

    async def _listen(self) -> None:
        url = self._database.url
        async with await psycopg.AsyncConnection.connect(url, **connection_options(url)) as conn:
            await configure_session(conn)
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.wake.set()  # rows may have been enqueued while nobody listened
            while True:
                async for _ in conn.notifies(timeout=self._ping_after_s):
                    self.wake.set()
                await conn.execute("SELECT 1")  # a dead connection shows itself here
