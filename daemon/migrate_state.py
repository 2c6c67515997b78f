"""``voucherify-relay migrate-state``: move a SQLite state file into an empty PostgreSQL database.

It copies what makes a restart quiet and lossless: the meta values (baseline, cursor,
list backlog, a Retry-After deadline), every action (in flight and terminal, so nothing
is detected twice), the pending and dead outbox rows unchanged (row id, attempts, next
attempt, last error, body bytes) and the last hour of API call times (the budget holds
across the move). Delivered rows stay behind. It runs in one PostgreSQL transaction and
refuses a target that already holds relay state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.budget import WINDOW_S
from daemon.errors import ConfigError, StoreError
from daemon.store.postgres import open_postgres
from daemon.store.postgres_db import Connection, PostgresDatabase
from daemon.store.sqlite_db import SqliteDatabase
from daemon.urls import POSTGRES_SCHEMES

_ACTION_COLUMNS = "id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at, stuck_notified, project"
_OUTBOX_COLUMNS = "row_id, event_id, event_type, sink, action_id, body, status, attempts, created_at, next_attempt_at, last_error, finished_at, project"
_COUNT_STATE = "SELECT (SELECT count(*) FROM actions) + (SELECT count(*) FROM outbox) + (SELECT count(*) FROM meta) + (SELECT count(*) FROM api_calls)"


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What was copied."""

    meta: int
    actions: int
    in_flight: int
    pending: int
    dead: int
    api_calls: int


async def migrate_state(*, source: str, target: str, now: float | None = None) -> MigrationReport:
    """Copy the SQLite state at ``source`` (sqlite:///...) into the empty PostgreSQL database at ``target``."""
    path = sqlite_path(source)
    if not target.startswith(POSTGRES_SCHEMES):
        raise ConfigError("--to", "must be a postgresql:// (or postgres://) URL")
    sqlite = SqliteDatabase(path, mode="rw")  # an older file is brought to this version first; a missing one is refused
    try:
        rows = _read(sqlite, since=(time.time() if now is None else now) - WINDOW_S)
    finally:
        sqlite.close()
    stores = await open_postgres(target)
    try:
        database: PostgresDatabase = stores.database
        async with database.transaction("write") as conn:
            await _refuse_non_empty(conn, display=database.display)
            await _write(conn, rows)
    finally:
        await stores.close()
    return _report(rows)


def sqlite_path(url: str) -> Path:
    """Return the file a sqlite:///... URL names, or raise ConfigError naming --from."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise ConfigError("--from", "must be sqlite:///<path> of an existing state file")
    return Path(url.removeprefix("sqlite:///"))


def _read(sqlite: SqliteDatabase, *, since: float) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite.db
    with sqlite.errors("read"):
        return {
            "meta": db.execute("SELECT key, value FROM meta").fetchall(),
            "actions": db.execute(f"SELECT {_ACTION_COLUMNS} FROM actions").fetchall(),  # noqa: S608 - constant columns
            "outbox": db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status IN ('pending', 'dead') ORDER BY row_id").fetchall(),  # noqa: S608
            "api_calls": db.execute("SELECT at, project FROM api_calls WHERE at >= ? ORDER BY at", (since,)).fetchall(),
        }


async def _refuse_non_empty(conn: Connection, *, display: str) -> None:
    row = await (await conn.execute(_COUNT_STATE)).fetchone()
    if row is not None and row[0]:
        msg = f"state database {display} already holds relay state; migrate-state only writes into an empty database (nothing was changed)"
        raise StoreError(msg)


async def _write(conn: Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    async with conn.cursor() as cursor:
        if rows["meta"]:
            await cursor.executemany("INSERT INTO meta (key, value) VALUES (%s, %s)", rows["meta"])
        if rows["actions"]:
            actions = [(*row[:7], bool(row[7]), row[8], bool(row[9]), row[10]) for row in rows["actions"]]
            await cursor.executemany(f"INSERT INTO actions ({_ACTION_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})", actions)  # noqa: S608
        if rows["outbox"]:
            await cursor.executemany(f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES ({', '.join(['%s'] * 13)})", rows["outbox"])  # noqa: S608
            await cursor.execute("SELECT setval(pg_get_serial_sequence('outbox', 'row_id'), (SELECT max(row_id) FROM outbox))")
            await cursor.execute("SELECT pg_notify('relay_outbox', '')")
        if rows["api_calls"]:
            await cursor.executemany("INSERT INTO api_calls (at, project) VALUES (%s, %s)", rows["api_calls"])


def _report(rows: dict[str, list[tuple[Any, ...]]]) -> MigrationReport:
    return MigrationReport(
        meta=len(rows["meta"]),
        actions=len(rows["actions"]),
        in_flight=sum(1 for row in rows["actions"] if not row[7]),
        pending=sum(1 for row in rows["outbox"] if row[6] == "pending"),
        dead=sum(1 for row in rows["outbox"] if row[6] == "dead"),
        api_calls=len(rows["api_calls"]),
    )
