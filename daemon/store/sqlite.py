"""SqliteStateStore: the StateStore on one SQLite file in WAL mode.

Calls are synchronous and short (indexed reads, small writes); the daemon makes them
from its event loop. Each poll cycle's state changes and outbox rows are one
transaction, so a crash at any point either keeps both or neither.

``mode`` follows SQLite's URI modes: ``rwc`` (the daemon) creates a missing file, ``rw``
and ``ro`` (the outbox commands) never do. The file's identity (device, inode) is kept at
open, so a file deleted or replaced under a running relay is noticed (``file_problem``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from daemon.errors import StoreError
from daemon.model import ActionSnapshot, Delivery, Event
from daemon.store import AttemptResults, Backlog, Cursor, CycleResult, OutboxRow, OutboxStats

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    operation_status TEXT,
    progress INTEGER,
    created_at TEXT,
    updated_at TEXT,
    terminal INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    stuck_notified INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS actions_in_flight ON actions (id) WHERE terminal = 0;
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
    UNIQUE (event_id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (row_id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS outbox_finished ON outbox (finished_at) WHERE status = 'delivered';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_calls (at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS api_calls_at ON api_calls (at);
"""
BACKLOG_KEY = "list_backlog"
_OUTBOX_COLUMNS = "row_id, event_id, event_type, sink, action_id, status, attempts, created_at, next_attempt_at, last_error"


class SqliteStateStore:
    """StateStore on SQLite (WAL)."""

    def __init__(self, path: Path, *, mode: Literal["rwc", "rw", "ro"] = "rwc") -> None:
        self.path = path
        if mode != "rwc" and not path.exists():
            msg = f"no state database at {path} (RELAY_STATE_URL); the relay creates it on its first run"
            raise StoreError(msg)
        with self._errors("open"):
            if mode == "rwc":
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True, isolation_level=None, timeout=5.0)
            self._identity = _identity(path)
            if mode == "ro":
                self._check_version()
                return
            self._db.execute("PRAGMA journal_mode=WAL").fetchone()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
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

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            msg = f"{self.path}: schema version {version} is newer than this relay understands ({SCHEMA_VERSION})"
            raise StoreError(msg)

    def _migrate(self) -> None:
        self._check_version()
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            msg = f"state database {self.path}: cannot {doing}: {exc}"
            raise StoreError(msg) from exc
        except OSError as exc:
            msg = f"state database {self.path}: cannot {doing}: {exc.strerror}"
            raise StoreError(msg) from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- action state -------------------------------------------------------------

    def load_cursor(self) -> Cursor:
        """Return the baseline flag, the newest created_at seen and the list backlog, if any."""
        with self._errors("read"):
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return Cursor(
            first_run=meta.get("baseline_done") != "1",
            newest_created_at=meta.get("newest_created_at"),
            backlog=_backlog_from(meta.get(BACKLOG_KEY)),
        )

    def get_snapshots(self, ids: Iterable[str]) -> dict[str, ActionSnapshot]:
        """Return the stored snapshots of the given action ids."""
        wanted = list(ids)
        found: dict[str, ActionSnapshot] = {}
        with self._errors("read"):
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, type, status, operation_status, progress, created_at, updated_at FROM actions WHERE id IN ({marks})"  # noqa: S608 - placeholders only
                found.update({row[0]: ActionSnapshot(*row) for row in self._db.execute(sql, chunk)})
        return found

    def in_flight(self) -> dict[str, ActionSnapshot]:
        """Return every action last seen not yet DONE or FAILED."""
        sql = "SELECT id, type, status, operation_status, progress, created_at, updated_at FROM actions WHERE terminal = 0"
        with self._errors("read"):
            return {row[0]: ActionSnapshot(*row) for row in self._db.execute(sql)}

    def stuck_notified(self) -> set[str]:
        """Return the in-flight actions already reported as stuck."""
        with self._errors("read"):
            return {row[0] for row in self._db.execute("SELECT id FROM actions WHERE terminal = 0 AND stuck_notified = 1")}

    def commit_cycle(self, result: CycleResult, *, now: float) -> int:
        """Persist a cycle's snapshots, forgotten ids, cursor and outbox rows in one transaction."""
        enqueued = 0
        if not _changes_state(result):
            return 0
        with self._transaction():
            self._db.executemany(
                "INSERT INTO actions (id, type, status, operation_status, progress, created_at, updated_at, terminal, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "type=excluded.type, status=excluded.status, operation_status=excluded.operation_status, "
                "progress=excluded.progress, updated_at=excluded.updated_at, terminal=excluded.terminal, seen_at=excluded.seen_at",
                [(*_snapshot_row(s), int(s.terminal), now) for s in result.snapshots],
            )
            self._db.executemany("DELETE FROM actions WHERE id = ?", [(i,) for i in result.forgotten])
            self._db.executemany("UPDATE actions SET stuck_notified = 1 WHERE id = ?", [(i,) for i in result.stuck])
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
            self._db.execute("DELETE FROM meta WHERE key = ?", (BACKLOG_KEY,))
        else:
            fields = {name: getattr(backlog, name) for name in Backlog.__slots__}
            self._set_meta(BACKLOG_KEY, json.dumps(fields))

    def enqueue(self, event: Event, sinks: Iterable[str], *, now: float) -> int:
        """Add one event for the given sinks outside a poll cycle (send-test, tools)."""
        with self._transaction():
            return self._insert_event(event, sinks, now=now)

    def _insert_event(self, event: Event, sinks: Iterable[str], *, now: float) -> int:
        body = event.body()
        action_id = str(event.data.get("id", ""))
        rows = [(event.id, event.type, sink, action_id, body, now, now) for sink in sinks]
        before = self._db.total_changes
        self._db.executemany(
            "INSERT OR IGNORE INTO outbox (event_id, event_type, sink, action_id, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return self._db.total_changes - before

    def load_meta(self, key: str) -> str | None:
        """Return a small persisted value (e.g. a Retry-After deadline), if set."""
        with self._errors("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def save_meta(self, key: str, value: str) -> None:
        """Persist a small value."""
        with self._errors("write"):
            self._set_meta(key, value)

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # --- outbox ---------------------------------------------------------------------

    def claim_due(self, *, now: float, limit: int, sink: str | None = None) -> list[Delivery]:
        """Return up to ``limit`` pending deliveries due by ``now`` (for one sink, if given), oldest due first."""
        where = "status = 'pending' AND next_attempt_at <= ?" + (" AND sink = ?" if sink is not None else "")
        sql = (
            "SELECT row_id, event_id, event_type, sink, action_id, body, attempts, created_at FROM outbox "  # noqa: S608 - constant clauses
            f"WHERE {where} ORDER BY next_attempt_at, row_id LIMIT ?"
        )
        params = (now, *([sink] if sink is not None else []), limit)
        with self._errors("read"):
            return [Delivery(*row) for row in self._db.execute(sql, params)]

    def dead_letter_unknown_sinks(self, known: Iterable[str]) -> int:
        """Dead-letter pending rows for sinks that are no longer configured; return how many."""
        names = list(known)
        marks = ",".join("?" * len(names))  # SQLite reads NOT IN () as true: no sink known, every row orphaned
        sql = (
            "UPDATE outbox SET status='dead', next_attempt_at=NULL, "  # noqa: S608 - placeholders only
            "last_error='sink ' || sink || ' is no longer configured; add it back, then replay' "
            f"WHERE status='pending' AND sink NOT IN ({marks})"
        )
        with self._transaction():
            return self._db.execute(sql, names).rowcount

    def mark_delivered(self, row_id: int, *, now: float) -> None:
        """Record a successful delivery."""
        self.apply_results(AttemptResults(delivered=[row_id]), now=now)

    def reschedule(self, row_id: int, *, next_attempt_at: float, error: str) -> None:
        """Record a failed attempt and when to try again."""
        self.apply_results(AttemptResults(retries=[(row_id, next_attempt_at, error)]), now=0.0)

    def mark_dead(self, row_id: int, *, reason: str) -> None:
        """Move a delivery to the dead-letter list; it stays until replayed."""
        self.apply_results(AttemptResults(dead=[(row_id, reason)]), now=0.0)

    def apply_results(self, results: AttemptResults, *, now: float) -> None:
        """Record a batch of attempts in one transaction (one commit per batch, not per event)."""
        with self._transaction():
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

    def _update(self, sql: str, params: tuple[object, ...]) -> None:
        with self._errors("write"):
            self._db.execute(sql, params)

    def list_outbox(self, *, dead: bool, limit: int = 100) -> list[OutboxRow]:
        """Return dead-lettered rows, or pending ones, newest first."""
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = ? ORDER BY row_id DESC LIMIT ?"  # noqa: S608 - constant columns
        with self._errors("read"):
            return [OutboxRow(*row) for row in self._db.execute(sql, ("dead" if dead else "pending", limit))]

    def replay(self, row_id: int | None, *, now: float) -> int:
        """Make one row (or, with None, every dead row) pending again, due now; return how many."""
        sql = "UPDATE outbox SET status='pending', attempts=0, created_at=?, next_attempt_at=?, last_error=NULL, finished_at=NULL"
        with self._transaction():
            if row_id is None:
                cursor = self._db.execute(sql + " WHERE status='dead'", (now, now))
            else:
                cursor = self._db.execute(sql + " WHERE row_id=?", (now, now, row_id))
        return cursor.rowcount

    def outbox_stats(self) -> OutboxStats:
        """Return pending and dead counts and the oldest pending row's age anchor."""
        with self._errors("read"):
            pending, oldest = self._db.execute("SELECT count(*), min(created_at) FROM outbox WHERE status='pending'").fetchone()
            dead = self._db.execute("SELECT count(*) FROM outbox WHERE status='dead'").fetchone()[0]
        return OutboxStats(pending=pending, dead=dead, oldest_pending_created_at=oldest)

    def prune(self, *, older_than: float, calls_older_than: float | None = None) -> tuple[int, int]:
        """Delete delivered rows and terminal actions last touched before ``older_than`` (and the API call log before ``calls_older_than``)."""
        with self._transaction():
            deliveries = self._db.execute("DELETE FROM outbox WHERE status='delivered' AND finished_at < ?", (older_than,)).rowcount
            actions = self._db.execute("DELETE FROM actions WHERE terminal=1 AND seen_at < ?", (older_than,)).rowcount
            self._db.execute("DELETE FROM api_calls WHERE at < ?", (older_than if calls_older_than is None else calls_older_than,))
        return deliveries, actions

    # --- API call log (for the rolling-hour budget) -------------------------------

    def record_api_calls(self, moments: Iterable[float]) -> None:
        """Remember when requests were sent, so the budget holds across restarts."""
        with self._errors("write"):
            self._db.executemany("INSERT INTO api_calls VALUES (?)", [(m,) for m in moments])

    def api_calls_since(self, moment: float) -> list[float]:
        """Return the send times recorded at or after ``moment``."""
        with self._errors("read"):
            return [row[0] for row in self._db.execute("SELECT at FROM api_calls WHERE at >= ? ORDER BY at", (moment,))]

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._errors("close"):
            self._db.close()


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino

def _changes_state(result: CycleResult) -> bool:
    flags = (result.baseline_done, result.newest_created_at, result.backlog_changed)
    return any((result.snapshots, result.events, result.forgotten, result.stuck, *flags))


def _backlog_from(raw: str | None) -> Backlog | None:
    """Decode the persisted backlog; a value this version cannot read is dropped (the next cap hit starts anew)."""
    if raw is None:
        return None
    try:
        return Backlog(**json.loads(raw))
    except (ValueError, TypeError):
        return None


def _snapshot_row(s: ActionSnapshot) -> tuple[object, ...]:
    return (s.id, s.type, s.status, s.operation_status, s.progress, s.created_at, s.updated_at)
