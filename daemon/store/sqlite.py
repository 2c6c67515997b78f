"""The store ports on one SQLite file: SqliteActionStore, SqliteCallLog, and ``open_sqlite``.

The methods are ``async`` to fit the ports, but the SQLite calls run inline on the event
loop: they are short local I/O (indexed reads, small writes, well under a millisecond),
cheaper than a hop to a thread. Each poll cycle's state changes and outbox rows are one
transaction, so a crash at any point either keeps both or neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Event
from daemon.store import Backlog, Cursor, CycleResult, Fence, Stores, meta_key
from daemon.store.sqlite_db import SqliteDatabase
from daemon.store.sqlite_messages import SqliteMessageRefs
from daemon.store.sqlite_outbox import SqliteOutbox

BACKLOG_KEY = "list_backlog"
_SNAPSHOT_COLUMNS = "id, type, status, operation_status, progress, created_at, updated_at"


def open_sqlite(path: Path, *, mode: Literal["rwc", "rw", "ro"] = "rwc") -> Stores:
    """Open the SQLite state file and return its ports (``ro``/``rw``: only an existing file)."""
    database = SqliteDatabase(path, mode=mode)

    async def close() -> None:
        database.close()

    async def schema_version() -> int:
        return database.schema_version()

    def scope(project: str) -> tuple[SqliteActionStore, SqliteCallLog]:
        return SqliteActionStore(database, project=project), SqliteCallLog(database, project=project)

    return Stores(
        actions=SqliteActionStore(database),
        outbox=SqliteOutbox(database),
        calls=SqliteCallLog(database),
        scope=scope,
        messages=SqliteMessageRefs(database),
        location=str(path),
        close=close,
        file_problem=database.file_problem,
        schema_version=schema_version,
    )


class SqliteActionStore:
    """ActionStore on SQLite, for one project's actions and meta values."""

    def __init__(self, database: SqliteDatabase, *, project: str = DEFAULT_PROJECT) -> None:
        self._database = database
        self._db = database.db
        self.project = project

    async def load_cursor(self) -> Cursor:
        """Return the baseline flag, the newest created_at seen and the list backlog, if any."""
        keys = [meta_key(self.project, k) for k in ("baseline_done", "newest_created_at", BACKLOG_KEY)]
        with self._database.errors("read"):
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN (?, ?, ?)", keys).fetchall())
        baseline, newest, backlog = (meta.get(k) for k in keys)
        return Cursor(first_run=baseline != "1", newest_created_at=newest, backlog=Backlog.decode(backlog))

    async def get_snapshots(self, ids: Iterable[str]) -> dict[str, ActionSnapshot]:
        """Return the stored snapshots of the given action ids."""
        wanted = list(ids)
        found: dict[str, ActionSnapshot] = {}
        with self._database.errors("read"):
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM actions WHERE project = ? AND id IN ({marks})"  # noqa: S608 - placeholders only
                found.update({row[0]: ActionSnapshot(*row) for row in self._db.execute(sql, [self.project, *chunk])})
        return found

    async def in_flight(self) -> dict[str, ActionSnapshot]:
        """Return every action last seen not yet DONE or FAILED."""
        sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM actions WHERE project = ? AND terminal = 0"  # noqa: S608 - constant columns
        with self._database.errors("read"):
            return {row[0]: ActionSnapshot(*row) for row in self._db.execute(sql, (self.project,))}

    async def stuck_notified(self) -> set[str]:
        """Return the in-flight actions already reported as stuck."""
        with self._database.errors("read"):
            return {row[0] for row in self._db.execute("SELECT id FROM actions WHERE project = ? AND terminal = 0 AND stuck_notified = 1", (self.project,))}

    async def commit_cycle(self, result: CycleResult, *, now: float, fence: Fence | None = None) -> int:  # noqa: ARG002 - the file lock already makes one writer
        """Persist a cycle's snapshots, forgotten ids, cursor and outbox rows in one transaction."""
        enqueued = 0
        if not result.changes_state():
            return 0
        with self._database.transaction():
            self._db.executemany(
                "INSERT INTO actions (project, id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(project, id) DO UPDATE SET "
                "type=excluded.type, status=excluded.status, operation_status=excluded.operation_status, "
                "progress=excluded.progress, updated_at=excluded.updated_at, terminal=excluded.terminal, seen_at=excluded.seen_at",
                [(self.project, *_snapshot_row(s), int(s.terminal), now) for s in result.snapshots],
            )
            self._db.executemany("DELETE FROM actions WHERE project = ? AND id = ?", [(self.project, i) for i in result.forgotten])
            self._db.executemany("UPDATE actions SET stuck_notified = 1 WHERE project = ? AND id = ?", [(self.project, i) for i in result.stuck])
            for event, sinks in result.events:
                enqueued += self._insert_event(event, sinks, now=now)
            if result.newest_created_at is not None:
                self._set_meta("newest_created_at", result.newest_created_at)
            if result.baseline_done:
                self._set_meta("baseline_done", "1")
            if result.backlog_changed:
                self._set_backlog(result.backlog)
        return enqueued

    def _set_backlog(self, backlog: Backlog | None) -> None:
        if backlog is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (meta_key(self.project, BACKLOG_KEY),))
        else:
            self._set_meta(BACKLOG_KEY, backlog.encode())

    def _insert_event(self, event: Event, sinks: Iterable[str], *, now: float) -> int:
        body = event.body()
        action_id = str(event.data.get("id", ""))
        rows = [(event.id, event.type, sink, action_id, body, now, now, self.project) for sink in sinks]
        before = self._db.total_changes
        self._db.executemany(
            "INSERT OR IGNORE INTO outbox (event_id, event_type, sink, action_id, body, created_at, next_attempt_at, project) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return self._db.total_changes - before

    async def load_meta(self, key: str) -> str | None:
        """Return a small persisted value (e.g. a Retry-After deadline), if set."""
        with self._database.errors("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (meta_key(self.project, key),)).fetchone()
        return None if row is None else str(row[0])

    async def save_meta(self, key: str, value: str) -> None:
        """Persist a small value."""
        with self._database.errors("write"):
            self._set_meta(key, value)

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (meta_key(self.project, key), value))

    async def prune(self, *, older_than: float) -> int:
        """Delete terminal actions (of every project) last seen before ``older_than``; return how many."""
        with self._database.transaction():
            return int(self._db.execute("DELETE FROM actions WHERE terminal=1 AND seen_at < ?", (older_than,)).rowcount)


class SqliteCallLog:
    """CallLog on SQLite, for one project's requests."""

    def __init__(self, database: SqliteDatabase, *, project: str = DEFAULT_PROJECT) -> None:
        self._database = database
        self._db = database.db
        self.project = project

    async def record(self, moments: Iterable[float]) -> None:
        """Remember when requests were sent, so the budget holds across restarts."""
        with self._database.errors("write"):
            self._db.executemany("INSERT INTO api_calls (at, project) VALUES (?, ?)", [(m, self.project) for m in moments])

    async def since(self, moment: float) -> list[float]:
        """Return the send times recorded at or after ``moment``."""
        with self._database.errors("read"):
            return [row[0] for row in self._db.execute("SELECT at FROM api_calls WHERE project = ? AND at >= ? ORDER BY at", (self.project, moment))]

    async def prune(self, *, older_than: float) -> int:
        """Forget send times (of every project) before ``older_than``; return how many."""
        with self._database.transaction():
            return int(self._db.execute("DELETE FROM api_calls WHERE at < ?", (older_than,)).rowcount)


def _snapshot_row(s: ActionSnapshot) -> tuple[object, ...]:
    return (s.id, s.type, s.status, s.operation_status, s.progress, s.created_at, s.updated_at)
