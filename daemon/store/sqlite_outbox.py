"""SqliteOutbox: the Outbox port on the SQLite state file.

Calls run inline on the event loop (short local I/O); rows are enqueued by
``SqliteActionStore.commit_cycle`` in the cycle's own transaction. One process owns the
file, so there are no claims: a row stays pending while it is sent, and the dispatcher
passes the rows it holds as ``claim_due(skip=...)`` so it never hands one out twice.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Iterable, Mapping

from daemon.model import Delivery
from daemon.store import AttemptResults, OutboxRow, OutboxStats
from daemon.store.sqlite_db import SqliteDatabase

_OUTBOX_COLUMNS = "row_id, event_id, event_type, sink, action_id, status, attempts, created_at, next_attempt_at, last_error, project"


class SqliteOutbox:
    """Outbox on SQLite."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        self._db = database.db

    async def claim_due(self, *, now: float, limit: int, sink: str | None = None, skip: Collection[int] = ()) -> builtins.list[Delivery]:
        """Return up to ``limit`` pending deliveries due by ``now`` (for one sink, if given), oldest due first, none of ``skip``."""
        where = "status = 'pending' AND next_attempt_at <= ?" + (" AND sink = ?" if sink is not None else "")
        if skip:
            where += f" AND row_id NOT IN ({','.join('?' * len(skip))})"
        sql = (
            "SELECT row_id, event_id, event_type, sink, action_id, body, attempts, created_at, NULL, project FROM outbox "  # noqa: S608 - constant clauses
            f"WHERE {where} ORDER BY next_attempt_at, row_id LIMIT ?"
        )
        params = (now, *([sink] if sink is not None else []), *skip, limit)
        with self._database.errors("read"):
            return [Delivery(*row) for row in self._db.execute(sql, params)]

    async def extend_claims(self, claims: Mapping[int, str]) -> None:
        """Nothing to extend: SQLite hands out no claims."""

    async def dead_letter_unknown_sinks(self, known: Iterable[str]) -> int:
        """Dead-letter pending rows for sinks that are no longer configured; return how many."""
        return self._dead_letter_unknown("sink", known)

    async def dead_letter_unknown_projects(self, known: Iterable[str]) -> int:
        """Dead-letter pending rows of projects that are no longer configured; return how many."""
        return self._dead_letter_unknown("project", known)

    def _dead_letter_unknown(self, column: str, known: Iterable[str]) -> int:
        names = builtins.list(known)
        marks = ",".join("?" * len(names))  # SQLite reads NOT IN () as true: nothing known, every row orphaned
        sql = (
            "UPDATE outbox SET status='dead', next_attempt_at=NULL, "  # noqa: S608 - our column names, placeholders
            f"last_error='{column} ' || {column} || ' is no longer configured; add it back, then replay' "
            f"WHERE status='pending' AND {column} NOT IN ({marks})"
        )
        with self._database.transaction():
            return int(self._db.execute(sql, names).rowcount)

    async def apply_results(self, results: AttemptResults, *, now: float) -> None:
        """Record a batch of attempts in one transaction (one commit per batch, not per event)."""
        with self._database.transaction():
            self._db.executemany(
                "UPDATE outbox SET status='delivered', attempts=attempts+1, finished_at=?, last_error=NULL WHERE row_id=?",
                [(now, row_id) for row_id in results.delivered],
            )
            self._db.executemany(
                "UPDATE outbox SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE row_id=?",
                [(at, error, row_id) for row_id, at, error in results.retries],
            )
            self._db.executemany(
                "UPDATE outbox SET status='dead', attempts=attempts+1, next_attempt_at=NULL, last_error=? WHERE row_id=?",
                [(reason, row_id) for row_id, reason in results.dead],
            )

    async def list(self, *, dead: bool, limit: int = 100, project: str | None = None) -> builtins.list[OutboxRow]:
        """Return dead-lettered rows, or pending ones (of one project, if given), newest first."""
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = ? AND (? IS NULL OR project = ?) ORDER BY row_id DESC LIMIT ?"  # noqa: S608
        with self._database.errors("read"):
            return [OutboxRow(*row) for row in self._db.execute(sql, ("dead" if dead else "pending", project, project, limit))]

    async def replay(self, row_id: int | None, *, now: float, project: str | None = None) -> int:
        """Make one row (or, with None, every dead row; of one project, if given) pending again, due now; return how many."""
        sql = "UPDATE outbox SET status='pending', attempts=0, created_at=?, next_attempt_at=?, last_error=NULL, finished_at=NULL"
        scope = " AND (? IS NULL OR project = ?)"
        with self._database.transaction():
            if row_id is None:
                cursor = self._db.execute(sql + " WHERE status='dead'" + scope, (now, now, project, project))
            else:
                cursor = self._db.execute(sql + " WHERE row_id=?" + scope, (now, now, row_id, project, project))
        return int(cursor.rowcount)

    async def stats(self) -> OutboxStats:
        """Return pending and dead counts and the oldest pending row's age anchor."""
        with self._database.errors("read"):
            pending, oldest = self._db.execute("SELECT count(*), min(created_at) FROM outbox WHERE status='pending'").fetchone()
            dead = self._db.execute("SELECT count(*) FROM outbox WHERE status='dead'").fetchone()[0]
        return OutboxStats(pending=pending, dead=dead, oldest_pending_created_at=oldest)

    async def prune(self, *, older_than: float) -> int:
        """Delete rows delivered before ``older_than``; return how many."""
        with self._database.transaction():
            return int(self._db.execute("DELETE FROM outbox WHERE status='delivered' AND finished_at < ?", (older_than,)).rowcount)
