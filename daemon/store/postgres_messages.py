"""PostgresMessageRefs: the MessageRefs port on PostgreSQL (table ``slack_messages``)."""

from __future__ import annotations

from daemon.store import STAGES, MessageRef
from daemon.store.postgres_db import PostgresDatabase


class PostgresMessageRefs:
    """MessageRefs on PostgreSQL: one row per (sink, action id), shared by every replica."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    async def get(self, sink: str, action_id: str) -> MessageRef | None:
        """Return where ``sink`` posted ``action_id``'s message, if it did."""
        async with self._database.connection() as conn:
            row = await (await conn.execute("SELECT channel, ts, stage FROM slack_messages WHERE sink = %s AND action_id = %s", (sink, action_id))).fetchone()
        if row is None:
            return None
        stages = [s for s in STAGES if s == row[2]]
        return MessageRef(channel=row[0], ts=row[1], stage=stages[0] if stages else "live")

    async def put(self, sink: str, action_id: str, ref: MessageRef, *, now: float) -> None:
        """Remember (or advance) the message of ``action_id`` for ``sink``."""
        async with self._database.connection("write") as conn:
            await conn.execute(
                "INSERT INTO slack_messages VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sink, action_id) DO UPDATE SET "
                "channel=excluded.channel, ts=excluded.ts, stage=excluded.stage, updated_at=excluded.updated_at",
                (sink, action_id, ref.channel, ref.ts, ref.stage, now),
            )

    async def prune(self, *, older_than: float) -> int:
        """Forget messages not touched since ``older_than``; return how many."""
        async with self._database.connection("write") as conn:
            return int((await conn.execute("DELETE FROM slack_messages WHERE updated_at < %s", (older_than,))).rowcount)
