"""Per-project state in one database (issue 13), run against every store adapter.

Each project has its own cursor, baseline, list backlog, action snapshots, meta values and
API call log; the outbox is shared and remembers whose row is whose. The project
``default`` keeps the single-project keys, so an upgraded database changes nothing for it.
"""

from __future__ import annotations

import sqlite3

from daemon.model import DEFAULT_PROJECT
from daemon.store import Backlog
from daemon.store.sqlite import open_sqlite
from daemon.store.sqlite_db import SCHEMA_VERSION
from tests.integration.test_store_contract import T0, cycle, event, snap, stores, stores_factory  # noqa: F401 - fixtures


async def test_two_projects_keep_their_own_cursor_snapshots_meta_and_calls(stores):  # noqa: F811 - the fixture
    """A cycle committed for one project moves neither the other's cursor nor its in-flight actions, meta or call log."""
    eu, us = stores.for_project("eu"), stores.for_project("us")
    backlog = Backlog(resume_end_date="2026-11-23T10:00:00.000Z", owed_until="2026-11-23T09:00:00.000Z", started_at=T0)
    done = cycle(snapshots=[snap("aa_1")], newest_created_at="2026-11-23T11:00:00.000Z", baseline_done=True, backlog=backlog, backlog_changed=True)
    await eu.actions.commit_cycle(done, now=T0)
    await eu.actions.save_meta("api_blocked_until", "123")
    await eu.calls.record([T0, T0 + 1])
    await us.actions.commit_cycle(cycle(snapshots=[snap("aa_1", "DONE")]), now=T0)
    eu_cursor, us_cursor = await eu.actions.load_cursor(), await us.actions.load_cursor()
    assert (eu_cursor.first_run, eu_cursor.newest_created_at, eu_cursor.backlog) == (False, "2026-11-23T11:00:00.000Z", backlog)
    assert (us_cursor.first_run, us_cursor.newest_created_at, us_cursor.backlog) == (True, None, None)
    assert list(await eu.actions.in_flight()) == ["aa_1"]
    assert await us.actions.in_flight() == {}, "the same action id in another project is another action"
    assert (await us.actions.get_snapshots(["aa_1"]))["aa_1"].status == "DONE"
    assert (await eu.actions.load_meta("api_blocked_until"), await us.actions.load_meta("api_blocked_until")) == ("123", None)
    assert (await eu.calls.since(0), await us.calls.since(0)) == ([T0, T0 + 1], [])
    default = stores.for_project(DEFAULT_PROJECT)
    assert default is stores
    assert (await default.actions.load_cursor()).first_run, "the project default has its own (single-project) keys"


async def test_outbox_rows_carry_their_project_for_list_replay_and_removal(stores):  # noqa: F811 - the fixture
    """Rows remember their project: list and replay filter by it, and a removed project's pending rows are dead-lettered with a reason."""
    for name in ("eu", "us"):
        scoped = stores.for_project(name)
        await scoped.actions.commit_cycle(cycle(events=[event(f"aa_{name}")]), now=T0)
    assert {(r.action_id, r.project) for r in await stores.outbox.list(dead=False)} == {("aa_eu", "eu"), ("aa_us", "us")}
    assert [r.action_id for r in await stores.outbox.list(dead=False, project="us")] == ["aa_us"]
    assert await stores.outbox.dead_letter_unknown_projects(["eu"]) == 1
    (dead,) = await stores.outbox.list(dead=True)
    assert (dead.project, dead.last_error) == ("us", "project us is no longer configured; add it back, then replay")
    assert await stores.outbox.replay(None, now=T0 + 5, project="eu") == 0, "eu has no dead rows"
    assert await stores.outbox.replay(dead.row_id, now=T0 + 5, project="eu") == 0, "a row of another project is not replayed"
    assert await stores.outbox.replay(None, now=T0 + 5, project="us") == 1
    assert sorted(d.action_id for d in await stores.outbox.claim_due(now=T0 + 5, limit=10)) == ["aa_eu", "aa_us"]


V2_TABLES = """
CREATE TABLE actions (id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, operation_status TEXT, progress INTEGER,
    created_at TEXT, updated_at TEXT, terminal INTEGER NOT NULL, seen_at REAL NOT NULL, stuck_notified INTEGER NOT NULL DEFAULT 0);
CREATE INDEX actions_in_flight ON actions (id) WHERE terminal = 0;
CREATE INDEX actions_seen ON actions (seen_at) WHERE terminal = 1;
CREATE TABLE outbox (row_id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, event_type TEXT NOT NULL, sink TEXT NOT NULL, action_id TEXT NOT NULL,
    body BLOB NOT NULL, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    next_attempt_at REAL, last_error TEXT, finished_at REAL, UNIQUE (event_id, sink));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE api_calls (at REAL NOT NULL);
CREATE INDEX api_calls_at ON api_calls (at);
INSERT INTO actions VALUES ('aa_1', 'CUSTOMERS.IMPORT_CSV', 'IN_PROGRESS', NULL, 40, '2026-11-23T11:00:00.000Z', NULL, 0, 1.0, 0);
INSERT INTO outbox (event_id, event_type, sink, action_id, body, created_at, next_attempt_at)
    VALUES ('evt_1', 'async_action.completed', 'a', 'aa_0', x'7b7d', 1.0, 1.0);
INSERT INTO meta VALUES ('baseline_done', '1');
INSERT INTO api_calls VALUES (1800000000.0);
PRAGMA user_version=2
"""


async def test_a_version_2_state_file_is_upgraded_and_its_state_belongs_to_the_default_project(tmp_path):
    """A single-project state file from before projects opens at the current version; its baseline, actions, rows and calls are the project default's."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V2_TABLES)
    db.close()
    opened = open_sqlite(path)
    try:
        assert not (await opened.actions.load_cursor()).first_run, "no new baseline, so no flood"
        assert list(await opened.actions.in_flight()) == ["aa_1"]
        assert await opened.calls.since(0) == [1_800_000_000.0]
        assert [(r.event_id, r.project) for r in await opened.outbox.list(dead=False)] == [("evt_1", DEFAULT_PROJECT)]
        assert (await opened.for_project("eu").actions.load_cursor()).first_run, "a new project takes its own baseline"
        assert await opened.schema_version() == SCHEMA_VERSION == 3
    finally:
        await opened.close()
