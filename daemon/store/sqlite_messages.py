"""SqliteMessageRefs: the MessageRefs port on the shared SQLite file (table ``slack_messages``)."""

from __future__ import annotations

from daemon.store import STAGES, MessageRef
from daemon.store.sqlite_db import SqliteDatabase


class SqliteMessageRefs:
    """MessageRefs on SQLite: one row per (sink, action id)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        self._db = database.db

    async def get(self, sink: str, action_id: str) -> MessageRef | None:
        """Return where ``sink`` posted ``action_id``'s message, if it did."""
        with self._database.errors("read"):
            row = self._db.execute("SELECT channel, ts, stage FROM slack_messages WHERE sink = ? AND action_id = ?", (sink, action_id)).fetchone()
        if row is None:
            return None
        stages = [s for s in STAGES if s == row[2]]
        return MessageRef(channel=row[0], ts=row[1], stage=stages[0] if stages else "live")

    async def put(self, sink: str, action_id: str, ref: MessageRef, *, now: float) -> None:
        """Remember (or advance) the message of ``action_id`` for ``sink``."""
        with self._database.transaction():
            self._db.execute(
                "INSERT INTO slack_messages VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sink, action_id) DO UPDATE SET "
                "channel=excluded.channel, ts=excluded.ts, stage=excluded.stage, updated_at=excluded.updated_at",
                (sink, action_id, ref.channel, ref.ts, ref.stage, now),
            )

    async def prune(self, *, older_than: float) -> int:
        """Forget messages not touched since ``older_than``; return how many."""
        with self._database.transaction():
            return int(self._db.execute("DELETE FROM slack_messages WHERE updated_at < ?", (older_than,)).rowcount)
