"""PostgresActionStore and PostgresCallLog: the action and call-log ports on PostgreSQL.

A cycle's state and outbox rows are one transaction, as on SQLite. With a ``Fence`` the
same transaction first checks, under a share lock on the lease row, that the lease is
still this replica's term; a leader paused past its lease therefore writes nothing.
A commit that enqueued rows notifies ``relay_outbox`` so every replica's deliverers wake.
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.errors import LeaseLostError
from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Event
from daemon.store import Backlog, Cursor, CycleResult, Fence, meta_key
from daemon.store.postgres_db import Connection, PostgresDatabase

BACKLOG_KEY = "list_backlog"  # the same meta key as on SQLite, so migrate-state copies it as is
NOTIFY_CHANNEL = "relay_outbox"
_SNAPSHOT_COLUMNS = "id, type, status, operation_status, progress, created_at, updated_at"
_UPSERT_ACTION = (
    "INSERT INTO actions (project, id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (project, id) DO UPDATE SET "
    "type=excluded.type, status=excluded.status, operation_status=excluded.operation_status, "
    "progress=excluded.progress, updated_at=excluded.updated_at, terminal=excluded.terminal, seen_at=excluded.seen_at"
)
_INSERT_ROWS = (
    "INSERT INTO outbox (event_id, event_type, sink, action_id, body, created_at, next_attempt_at, project) "
    "SELECT %s, %s, unnest(%s::text[]), %s, %s, %s, %s, %s ON CONFLICT (event_id, sink) DO NOTHING"
)
_FENCE = "SELECT 1 FROM relay_lease WHERE name = %s AND holder = %s AND term = %s AND expires_at > now() FOR SHARE"


class PostgresActionStore:
    """ActionStore on PostgreSQL, for one project's actions and meta values."""

    def __init__(self, database: PostgresDatabase, *, project: str = DEFAULT_PROJECT) -> None:
        self._database = database
        self.project = project

    async def load_cursor(self) -> Cursor:
        """Return the baseline flag, the newest created_at seen and the list backlog, if any."""
        keys = [meta_key(self.project, k) for k in ("baseline_done", "newest_created_at", BACKLOG_KEY)]
        async with self._database.connection() as conn:
            meta = dict(await (await conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)", (keys,))).fetchall())
        baseline, newest, backlog = (meta.get(k) for k in keys)
        return Cursor(first_run=baseline != "1", newest_created_at=newest, backlog=Backlog.decode(backlog))

    async def get_snapshots(self, ids: Iterable[str]) -> dict[str, ActionSnapshot]:
        """Return the stored snapshots of the given action ids."""
        sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM actions WHERE project = %s AND id = ANY(%s)"  # noqa: S608 - constant columns
        async with self._database.connection() as conn:
            rows = await (await conn.execute(sql, (self.project, list(ids)))).fetchall()
        return {row[0]: ActionSnapshot(*row) for row in rows}

    async def in_flight(self) -> dict[str, ActionSnapshot]:
        """Return every action last seen not yet DONE or FAILED."""
        sql = f"SELECT {_SNAPSHOT_COLUMNS} FROM actions WHERE project = %s AND NOT terminal"  # noqa: S608 - constant columns
        async with self._database.connection() as conn:
            rows = await (await conn.execute(sql, (self.project,))).fetchall()
        return {row[0]: ActionSnapshot(*row) for row in rows}

    async def stuck_notified(self) -> set[str]:
        """Return the in-flight actions already reported as stuck."""
        sql = "SELECT id FROM actions WHERE project = %s AND NOT terminal AND stuck_notified"
        async with self._database.connection() as conn:
            rows = await (await conn.execute(sql, (self.project,))).fetchall()
        return {row[0] for row in rows}

    async def commit_cycle(self, result: CycleResult, *, now: float, fence: Fence | None = None) -> int:
        """Persist a cycle's snapshots, forgotten ids, cursor and outbox rows in one transaction (under ``fence``, if given)."""
        if not result.changes_state():
            return 0
        async with self._database.transaction() as conn:
            if fence is not None:
                await _check_fence(conn, fence, display=self._database.display)
            await _write_actions(conn, result, now=now, project=self.project)
            enqueued = 0
            for event, sinks in result.events:
                enqueued += await _insert_event(conn, event, sinks, now=now, project=self.project)
            await _write_cursor(conn, result, project=self.project)
            if enqueued:
                await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
        return enqueued

    async def load_meta(self, key: str) -> str | None:
        """Return a small persisted value (e.g. a Retry-After deadline), if set."""
        async with self._database.connection() as conn:
            row = await (await conn.execute("SELECT value FROM meta WHERE key = %s", (meta_key(self.project, key),))).fetchone()
        return None if row is None else str(row[0])

    async def save_meta(self, key: str, value: str) -> None:
        """Persist a small value."""
        async with self._database.connection("write") as conn:
            await _set_meta(conn, meta_key(self.project, key), value)

    async def prune(self, *, older_than: float) -> int:
        """Delete terminal actions (of every project) last seen before ``older_than``; return how many."""
        async with self._database.connection("write") as conn:
            return (await conn.execute("DELETE FROM actions WHERE terminal AND seen_at < %s", (older_than,))).rowcount


class PostgresCallLog:
    """CallLog on PostgreSQL for one project: shared by every replica, so the hourly budget holds across them."""

    def __init__(self, database: PostgresDatabase, *, project: str = DEFAULT_PROJECT) -> None:
        self._database = database
        self.project = project

    async def record(self, moments: Iterable[float]) -> None:
        """Remember when requests were sent, so the budget holds across restarts and failovers."""
        async with self._database.connection("write") as conn:
            await conn.execute("INSERT INTO api_calls (at, project) SELECT unnest(%s::double precision[]), %s", (list(moments), self.project))

    async def since(self, moment: float) -> list[float]:
        """Return the send times recorded at or after ``moment``."""
        sql = "SELECT at FROM api_calls WHERE project = %s AND at >= %s ORDER BY at"
        async with self._database.connection() as conn:
            rows = await (await conn.execute(sql, (self.project, moment))).fetchall()
        return [row[0] for row in rows]

    async def prune(self, *, older_than: float) -> int:
        """Forget send times (of every project) before ``older_than``; return how many."""
        async with self._database.connection("write") as conn:
            return (await conn.execute("DELETE FROM api_calls WHERE at < %s", (older_than,))).rowcount


async def _check_fence(conn: Connection, fence: Fence, *, display: str) -> None:
    row = await (await conn.execute(_FENCE, (fence.name, fence.holder, fence.term))).fetchone()
    if row is None:
        msg = f"state database {display}: lease {fence.name!r} term {fence.term} no longer held by {fence.holder}; the cycle was not committed"
        raise LeaseLostError(msg)


async def _write_actions(conn: Connection, result: CycleResult, *, now: float, project: str) -> None:
    async with conn.cursor() as cursor:
        if result.snapshots:
            await cursor.executemany(_UPSERT_ACTION, [(project, *_snapshot_row(s), s.terminal, now) for s in result.snapshots])
        if result.forgotten:
            await cursor.execute("DELETE FROM actions WHERE project = %s AND id = ANY(%s)", (project, list(result.forgotten)))
        if result.stuck:
            await cursor.execute("UPDATE actions SET stuck_notified = true WHERE project = %s AND id = ANY(%s)", (project, list(result.stuck)))


async def _insert_event(conn: Connection, event: Event, sinks: Iterable[str], *, now: float, project: str) -> int:
    names = list(sinks)
    if not names:
        return 0
    body, action_id = event.body(), str(event.data.get("id", ""))
    cursor = await conn.execute(_INSERT_ROWS, (event.id, event.type, names, action_id, body, now, now, project))
    return cursor.rowcount


async def _write_cursor(conn: Connection, result: CycleResult, *, project: str) -> None:
    if result.newest_created_at is not None:
        await _set_meta(conn, meta_key(project, "newest_created_at"), result.newest_created_at)
    if result.baseline_done:
        await _set_meta(conn, meta_key(project, "baseline_done"), "1")
    if result.backlog_changed:
        if result.backlog is None:
            await conn.execute("DELETE FROM meta WHERE key = %s", (meta_key(project, BACKLOG_KEY),))
        else:
            await _set_meta(conn, meta_key(project, BACKLOG_KEY), result.backlog.encode())


async def _set_meta(conn: Connection, key: str, value: str) -> None:
    await conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def _snapshot_row(s: ActionSnapshot) -> tuple[object, ...]:
    return (s.id, s.type, s.status, s.operation_status, s.progress, s.created_at, s.updated_at)
