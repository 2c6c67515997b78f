"""Disk and database faults: a locked, foreign, corrupted or busy state database gives a clear error and loses nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.bootstrap import build_relay
from daemon.errors import StoreError
from daemon.model import Event, event_id_for
from daemon.store import CycleResult
from daemon.store.sqlite import open_sqlite
from tests.conftest import FAST, baseline, running, until


def corrupt(path: Path) -> None:
    """Overwrite the start of every page after the first: the header still reads as SQLite, the tables do not."""
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):
        data[offset : offset + 64] = b"\xde\xad\xbe\xef" * 16
    path.write_bytes(bytes(data))


async def filled_store(path: Path) -> None:
    """Create a state database with a few hundred outbox rows, then close it."""
    stores = open_sqlite(path)
    events = [Event(id=f"evt_{n}", type="async_action.completed", timestamp="2026-11-23T11:00:00.000Z", data={"id": f"aa_{n}" * 10}) for n in range(200)]
    await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event, ["a", "b"]) for event in events]), now=1.0)
    await stores.close()


async def test_a_second_relay_on_the_same_state_is_refused(make_settings):
    """While one relay runs, another on the same state file fails at start naming the locked file; once it stops, a new one starts."""
    settings = make_settings()
    async with running(settings):
        with pytest.raises(StoreError, match=r"already running .*state\.db is locked"):
            await build_relay(settings, retry=FAST)
    async with running(settings) as relay:
        await baseline(relay)


async def test_a_file_that_is_not_a_database_is_refused(make_settings):
    """A state file that is not SQLite fails the start with 'file is not a database', and the lock is not left held."""
    settings = make_settings()
    settings.state_path.write_text("voucherify,relay\nthis is a CSV, not a database\n")
    with pytest.raises(StoreError, match=r"state database .*state\.db: cannot open: file is not a database"):
        open_sqlite(settings.state_path)
    with pytest.raises(StoreError, match="file is not a database"):
        await build_relay(settings, retry=FAST)
    settings.state_path.unlink()
    async with running(settings) as relay:  # the failed start released the lock
        await baseline(relay)


async def test_a_corrupted_database_raises_store_errors_only(tmp_path):
    """Every read and write on a corrupted database raises StoreError naming the file and the damage, never a raw sqlite3 error."""
    path = tmp_path / "state.db"
    await filled_store(path)
    corrupt(path)
    stores = open_sqlite(path)
    actions, outbox = stores.actions, stores.outbox
    operations = {
        "load_cursor": actions.load_cursor,
        "in_flight": actions.in_flight,
        "claim_due": lambda: outbox.claim_due(now=time.time(), limit=10),
        "list_outbox": lambda: outbox.list(dead=False),
        "outbox_stats": outbox.stats,
        "commit_cycle": lambda: actions.commit_cycle(CycleResult(snapshots=[], events=[]), now=1.0),
        "replay": lambda: outbox.replay(None, now=1.0),
        "prune_outbox": lambda: outbox.prune(older_than=time.time()),
        "prune_actions": lambda: actions.prune(older_than=time.time()),
        "dead_letter_unknown_sinks": lambda: outbox.dead_letter_unknown_sinks(["a"]),
        "api_calls_since": lambda: stores.calls.since(0),
    }
    failures = {}
    for name, operation in operations.items():
        try:
            await operation()
        except StoreError as exc:
            failures[name] = str(exc)
    await stores.close()
    assert set(failures) >= operations.keys() - {"commit_cycle", "api_calls_since", "prune_actions"}, failures
    assert all(str(path) in message and "malformed" in message for message in failures.values())


async def test_a_corrupted_database_fails_the_start_and_releases_everything(make_settings):
    """A start that fails on a corrupted database raises StoreError and releases the lock, so a repaired state can start."""
    settings = make_settings()
    await filled_store(settings.state_path)
    corrupt(settings.state_path)
    with pytest.raises(StoreError, match="malformed"):
        await build_relay(settings, retry=FAST)
    settings.state_path.unlink()
    async with running(settings) as relay:
        await baseline(relay)


def test_a_pending_delivery_survives_a_crash(tmp_path):
    """A process killed right after a poll cycle committed leaves its outbox rows pending for the next start."""
    path = tmp_path / "state.db"
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from daemon.model import ActionSnapshot, Event
        from daemon.store import CycleResult
        import asyncio
        from daemon.store.sqlite import open_sqlite
        stores = open_sqlite(Path({str(path)!r}))
        snapshot = ActionSnapshot("aa_1", "VOUCHERS.IMPORT", "DONE", None, 100, "2026-11-23T11:00:00.000Z", "2026-11-23T11:00:01.000Z")
        event = Event("evt_1", "async_action.completed", "2026-11-23T11:00:01.000Z", {{"id": "aa_1"}})
        asyncio.run(stores.actions.commit_cycle(CycleResult(snapshots=[snapshot], events=[(event, ["a", "b"])], baseline_done=True), now=1.0))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=30, check=False)  # noqa: S603 - our interpreter, our code
    assert proc.returncode == -9, proc.stderr
    sinks, status, first_run = asyncio.run(read_back(path))
    assert (sinks, status, first_run) == (["a", "b"], "DONE", False)


async def read_back(path: Path) -> tuple[list[str], str, bool]:
    """Return the due rows' sinks, action aa_1's status and the first-run flag of the database at ``path``."""
    stores = open_sqlite(path)
    try:
        sinks = sorted(d.sink for d in await stores.outbox.claim_due(now=2.0, limit=10))
        status = (await stores.actions.get_snapshots(["aa_1"]))["aa_1"].status
        return sinks, status, (await stores.actions.load_cursor()).first_run
    finally:
        await stores.close()


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


async def test_a_database_locked_by_another_process_defers_polling_and_loses_nothing(standin, receiver, make_settings):
    """While another process holds a write lock on the state database, cycles fail loudly; once it lets go, the event arrives once."""
    action_id = standin.add_action()
    settings = make_settings()
    with capture_logs() as logs:
        async with running(settings) as relay:
            await baseline(relay)
            relay.stores.actions._db.execute("PRAGMA busy_timeout=50")  # not 5 s per attempt: the test waits for several cycles
            holder = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLD_LOCK, str(settings.state_path), "0.8", stdout=asyncio.subprocess.PIPE)
            assert holder.stdout is not None
            assert await holder.stdout.readline() == b"locked\n"
            standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await until(lambda: any(e["event"] == "poll.store_failed" for e in logs), timeout_s=5)
            assert receiver.requests == []
            await holder.wait()
            await until(lambda: len(receiver.delivered) == 1, timeout_s=10)
            assert relay.running
    failed = [e for e in logs if e["event"] == "poll.store_failed"]
    assert "database is locked" in failed[0]["caused_by"]
    assert receiver.delivered_ids() == {event_id_for(action_id, "async_action.completed")}
