"""SqliteDatabase: one SQLite file in WAL mode, shared by the SQLite port adapters.

It opens (``mode`` follows SQLite's URI modes: ``rwc`` for the daemon creates a missing
file, ``rw`` and ``ro`` for the outbox commands never do), migrates, maps sqlite3 errors
to StoreError and runs transactions. The file's identity (device, inode) is kept at open,
so a file deleted or replaced under a running relay is noticed (``file_problem``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from daemon.errors import StoreError

PROJECTS_VERSION = 3
SCHEMA_VERSION = 3  # 2: slack_messages (issue 14); 3: a project column (issue 13). An older file is upgraded when opened read-write
_ACTIONS = """
CREATE TABLE IF NOT EXISTS actions (
    project TEXT NOT NULL DEFAULT 'default',
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    operation_status TEXT,
    progress INTEGER,
    created_at TEXT,
    updated_at TEXT,
    terminal INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    stuck_notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, id)
)
"""
_SCHEMA = (
    _ACTIONS
    + """;
CREATE INDEX IF NOT EXISTS actions_in_flight ON actions (project, id) WHERE terminal = 0;
CREATE INDEX IF NOT EXISTS actions_seen ON actions (seen_at) WHERE terminal = 1;
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sink TEXT NOT NULL,
    action_id TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,
    last_error TEXT,
    finished_at REAL,
    project TEXT NOT NULL DEFAULT 'default',
    UNIQUE (event_id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (row_id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS outbox_finished ON outbox (finished_at) WHERE status = 'delivered';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_calls (at REAL NOT NULL, project TEXT NOT NULL DEFAULT 'default');
CREATE INDEX IF NOT EXISTS api_calls_project_at ON api_calls (project, at);
CREATE TABLE IF NOT EXISTS slack_messages (
    sink TEXT NOT NULL,
    action_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    stage TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sink, action_id)
);
CREATE INDEX IF NOT EXISTS slack_messages_updated ON slack_messages (updated_at);
"""
)


# Version 3 gives every table that one project fills a project column; rows of an older file
# belong to the project ``default``. SQLite cannot change a primary key in place, so actions
# is copied into a new table.
_UPGRADE_TO_3 = (
    "ALTER TABLE actions RENAME TO actions_v2",
    "DROP INDEX IF EXISTS actions_in_flight",
    "DROP INDEX IF EXISTS actions_seen",
    _ACTIONS,
    (
        "INSERT INTO actions (id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at, stuck_notified) "
        "SELECT id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at, stuck_notified FROM actions_v2"
    ),
    "DROP TABLE actions_v2",
)


class SqliteDatabase:
    """The connection, its pragmas, the schema, error mapping and transactions."""

    def __init__(self, path: Path, *, mode: Literal["rwc", "rw", "ro"] = "rwc") -> None:
        self.path = path
        if mode != "rwc" and not path.exists():
            msg = f"no state database at {path} (RELAY_STATE_URL); the relay creates it on its first run"
            raise StoreError(msg)
        with self.errors("open"):
            if mode == "rwc":
                path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True, isolation_level=None, timeout=5.0)
            self._identity = _identity(path)
            if mode == "ro":
                self._check_version(read_only=True)
                return
            self.db.execute("PRAGMA journal_mode=WAL").fetchone()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    def file_problem(self) -> str | None:
        """Return what happened to the database file since it was opened (deleted, replaced), or None."""
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return f"state database {self.path} was deleted while the relay ran"
        except OSError as exc:
            return f"state database {self.path}: cannot stat it ({exc.strerror})"
        return None if now == self._identity else f"state database {self.path} was replaced by another file while the relay ran"

    def schema_version(self) -> int:
        """Return the schema version the file is at."""
        with self.errors("read"):
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, *, read_only: bool = False) -> int:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            msg = f"{self.path}: schema version {version} is newer than this relay understands ({SCHEMA_VERSION})"
            raise StoreError(msg)
        if read_only and 0 < version < SCHEMA_VERSION:
            msg = f"{self.path}: schema version {version} is older than this relay reads ({SCHEMA_VERSION}); start the relay once to upgrade it"
            raise StoreError(msg)
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        with self.transaction():
            if 0 < version < PROJECTS_VERSION:
                self._upgrade_to_3()
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _upgrade_to_3(self) -> None:
        columns = self._columns("actions")
        if columns and "project" not in columns:
            for statement in _UPGRADE_TO_3:
                self.db.execute(statement)
        for table in ("outbox", "api_calls"):
            columns = self._columns(table)
            if columns and "project" not in columns:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN project TEXT NOT NULL DEFAULT 'default'")
        self.db.execute("DROP INDEX IF EXISTS api_calls_at")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn sqlite3 and OS errors into StoreError naming the file and what was being done."""
        try:
            yield
        except sqlite3.Error as exc:
            msg = f"state database {self.path}: cannot {doing}: {exc}"
            raise StoreError(msg) from exc
        except OSError as exc:
            msg = f"state database {self.path}: cannot {doing}: {exc.strerror}"
            raise StoreError(msg) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block as one write transaction: all of it or nothing."""
        with self.errors("write"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self.errors("close"):
            self.db.close()


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino
