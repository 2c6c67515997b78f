"""The StateStore contract (daemon/store/__init__.py), run against every adapter.

Each adapter is a ``store_factory`` parameter: a callable that opens (or reopens) the
store at one location. A PostgresStateStore plugs in by adding a parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from daemon.model import ActionSnapshot, Event
from daemon.store import CycleResult, StateStore
from daemon.store.sqlite import SqliteStateStore

T0 = 1_800_000_000.0


def open_sqlite(tmp_path: Path) -> Callable[[], StateStore]:
    """Return a factory opening the SQLite store in ``tmp_path``."""
    return lambda: SqliteStateStore(tmp_path / "state.db")


ADAPTERS = {"sqlite": open_sqlite}


@pytest.fixture(params=sorted(ADAPTERS))
def store_factory(request, tmp_path) -> Iterator[Callable[[], StateStore]]:
    """Open stores of one adapter at one location; close every one opened."""
    make = ADAPTERS[request.param](tmp_path)
    opened: list[StateStore] = []

    def factory() -> StateStore:
        opened.append(make())
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory) -> StateStore:
    """Open a fresh store."""
    return store_factory()


def snap(action_id: str, status: str = "IN_PROGRESS", *, created: str = "2026-11-23T11:00:00.000Z") -> ActionSnapshot:
    """Return a snapshot of one action."""
    return ActionSnapshot(id=action_id, type="CUSTOMERS.IMPORT_CSV", status=status, operation_status=None, progress=50, created_at=created, updated_at=created)


def event(action_id: str, event_type: str = "async_action.completed") -> Event:
    """Return an event for one action."""
    return Event(id=f"evt_{action_id}_{event_type[-6:]}", type=event_type, timestamp="2026-11-23T11:00:00.000Z", data={"id": action_id})


def cycle(*, snapshots: Sequence[ActionSnapshot] = (), events: Sequence[Event] = (), sinks: Sequence[str] = ("a",), **more) -> CycleResult:
    """Return a cycle result routing every event to ``sinks``."""
    return CycleResult(snapshots=snapshots, events=[(e, list(sinks)) for e in events], **more)


class ExplodingEvents(list):
    """An events list that fails midway through iteration, as a crash inside the transaction would."""

    def __iter__(self):
        yield from list.__iter__(self)
        msg = "boom inside commit_cycle"
        raise RuntimeError(msg)


def test_a_fresh_store_is_empty(store):
    """A new store has no baseline, no actions, no outbox rows and no API calls."""
    cursor = store.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at) == (True, None)
    assert store.in_flight() == {}
    assert store.claim_due(now=T0, limit=10) == []
    stats = store.outbox_stats()
    assert (stats.pending, stats.dead, stats.oldest_pending_created_at) == (0, 0, None)
    assert store.api_calls_since(0) == []


def test_commit_cycle_persists_everything_across_reopen(store_factory):
    """Snapshots, forgotten ids, outbox rows per sink and the cursor survive closing and reopening."""
    store = store_factory()
    store.commit_cycle(cycle(snapshots=[snap("aa_1"), snap("aa_2")]), now=T0)
    finished = cycle(
        snapshots=[snap("aa_1", "DONE")],
        events=[event("aa_1")],
        sinks=["a", "b"],
        forgotten=["aa_2"],
        newest_created_at="2026-11-23T11:00:00.000Z",
        baseline_done=True,
    )
    enqueued = store.commit_cycle(finished, now=T0 + 1)
    assert enqueued == 2
    store.close()
    again = store_factory()
    cursor = again.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at) == (False, "2026-11-23T11:00:00.000Z")
    assert again.in_flight() == {}
    assert again.get_snapshots(["aa_1", "aa_2"]) == {"aa_1": snap("aa_1", "DONE")}
    assert sorted(d.sink for d in again.claim_due(now=T0 + 1, limit=10)) == ["a", "b"]


def test_an_exception_inside_commit_cycle_rolls_everything_back(store):
    """A failure midway through a cycle's commit leaves no snapshot, no outbox row and no cursor change."""
    store.commit_cycle(cycle(snapshots=[snap("aa_0")], newest_created_at="2026-11-23T10:00:00.000Z"), now=T0)
    broken = CycleResult(
        snapshots=[snap("aa_1", "DONE"), snap("aa_0", "DONE")],
        events=ExplodingEvents([(event("aa_1"), ["a"])]),
        forgotten=["aa_0"],
        newest_created_at="2026-11-23T11:00:00.000Z",
        baseline_done=True,
    )
    with pytest.raises(RuntimeError, match="boom"):
        store.commit_cycle(broken, now=T0 + 1)
    assert store.get_snapshots(["aa_0", "aa_1"]) == {"aa_0": snap("aa_0")}
    assert store.claim_due(now=T0 + 10, limit=10) == []
    cursor = store.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at) == (True, "2026-11-23T10:00:00.000Z")


def test_an_unserializable_event_rolls_back_the_events_before_it(store):
    """If the second event of a cycle cannot be stored, the first one's rows are not stored either."""
    bad = Event(id="evt_bad", type="async_action.completed", timestamp="x", data={"id": "aa_2", "oops": object()})
    with pytest.raises(TypeError):
        store.commit_cycle(cycle(snapshots=[snap("aa_1", "DONE")], events=[event("aa_1"), bad]), now=T0)
    assert store.outbox_stats().pending == 0
    assert store.get_snapshots(["aa_1"]) == {}


def test_enqueue_is_idempotent_per_event_and_sink(store):
    """The same event for the same sink is stored once, whether it comes again by enqueue or by a re-detected cycle."""
    assert store.enqueue(event("aa_1"), ["a"], now=T0) == 1
    assert store.enqueue(event("aa_1"), ["a"], now=T0 + 1) == 0
    assert store.commit_cycle(cycle(events=[event("aa_1")], sinks=["a", "b"]), now=T0 + 2) == 1
    [delivery] = store.claim_due(now=T0 + 5, limit=10, sink="a")
    store.mark_delivered(delivery.row_id, now=T0 + 6)
    assert store.enqueue(event("aa_1"), ["a"], now=T0 + 7) == 0, "a delivered event is not queued again"
    assert store.enqueue(event("aa_1", "async_action.failed"), ["a"], now=T0 + 8) == 1, "another event type is another event"


def test_claim_due_orders_by_due_time_and_filters_by_sink(store):
    """Only due pending rows are claimed, earliest due first then oldest row, at most ``limit``, optionally for one sink."""
    for n, sink in enumerate(["a", "b", "a", "b", "a"]):
        store.enqueue(event(f"aa_{n}"), [sink], now=T0 + n)
    rows = {d.action_id: d for d in store.claim_due(now=T0 + 10, limit=10)}
    store.reschedule(rows["aa_0"].row_id, next_attempt_at=T0 + 100, error="HTTP 503")
    due = store.claim_due(now=T0 + 10, limit=10)
    assert [d.action_id for d in due] == ["aa_1", "aa_2", "aa_3", "aa_4"]
    assert [d.action_id for d in store.claim_due(now=T0 + 10, limit=2)] == ["aa_1", "aa_2"]
    assert [d.action_id for d in store.claim_due(now=T0 + 10, limit=10, sink="a")] == ["aa_2", "aa_4"]
    assert [d.action_id for d in store.claim_due(now=T0 + 2.5, limit=10)] == ["aa_1", "aa_2"]
    assert [d.action_id for d in store.claim_due(now=T0 + 100, limit=10, sink="a")] == ["aa_2", "aa_4", "aa_0"]
    assert store.claim_due(now=T0 + 10, limit=10, sink="nobody") == []


def test_a_claimed_delivery_carries_the_event(store):
    """A claimed row holds the event id, type, sink, action id, exact body and attempt count."""
    sent = event("aa_1")
    store.enqueue(sent, ["a"], now=T0)
    [delivery] = store.claim_due(now=T0, limit=1)
    assert (delivery.event_id, delivery.event_type, delivery.sink, delivery.action_id) == (sent.id, sent.type, "a", "aa_1")
    assert delivery.body == sent.body()
    assert (delivery.attempts, delivery.created_at) == (0, T0)


def test_reschedule_mark_dead_and_replay(store):
    """Failures count attempts; a dead row leaves the queue until replay makes it pending and due again."""
    store.enqueue(event("aa_1"), ["a"], now=T0)
    store.enqueue(event("aa_2"), ["a"], now=T0)
    first, second = store.claim_due(now=T0, limit=10)
    store.reschedule(first.row_id, next_attempt_at=T0 + 5, error="HTTP 503")
    store.reschedule(first.row_id, next_attempt_at=T0 + 9, error="timed out")
    [pending_first, *_] = [r for r in store.list_outbox(dead=False) if r.row_id == first.row_id]
    assert (pending_first.attempts, pending_first.next_attempt_at, pending_first.last_error) == (2, T0 + 9, "timed out")
    store.mark_dead(first.row_id, reason="HTTP 410: endpoint gone")
    store.mark_dead(second.row_id, reason="expired")
    assert store.claim_due(now=T0 + 100, limit=10) == []
    dead = store.list_outbox(dead=True)
    assert [r.row_id for r in dead] == [second.row_id, first.row_id], "newest first"
    assert dead[1].last_error == "HTTP 410: endpoint gone"
    assert store.outbox_stats().dead == 2
    assert store.replay(first.row_id, now=T0 + 200) == 1
    [revived] = store.claim_due(now=T0 + 200, limit=10)
    assert (revived.row_id, revived.attempts, revived.created_at) == (first.row_id, 0, T0 + 200)
    assert store.replay(None, now=T0 + 300) == 1
    assert store.replay(None, now=T0 + 300) == 0
    assert store.replay(999_999, now=T0) == 0
    assert store.outbox_stats().dead == 0


def test_list_outbox_is_newest_first_and_limited(store):
    """Pending rows list newest first, up to the limit, without the delivered ones."""
    for n in range(5):
        store.enqueue(event(f"aa_{n}"), ["a"], now=T0 + n)
    [oldest, *_] = store.claim_due(now=T0 + 10, limit=1)
    store.mark_delivered(oldest.row_id, now=T0 + 10)
    listed = store.list_outbox(dead=False, limit=3)
    assert [r.action_id for r in listed] == ["aa_4", "aa_3", "aa_2"]
    assert all(r.status == "pending" for r in listed)
    assert "aa_0" not in {r.action_id for r in store.list_outbox(dead=False)}
    stats = store.outbox_stats()
    assert (stats.pending, stats.oldest_pending_created_at) == (4, T0 + 1)


def test_dead_letter_unknown_sinks(store):
    """Pending rows for sinks no longer configured are dead-lettered with a reason naming the sink; others stay."""
    store.enqueue(event("aa_1"), ["a", "gone"], now=T0)
    store.enqueue(event("aa_2"), ["gone"], now=T0)
    assert store.dead_letter_unknown_sinks(["a"]) == 2
    assert [d.sink for d in store.claim_due(now=T0, limit=10)] == ["a"]
    assert all("gone" in (r.last_error or "") for r in store.list_outbox(dead=True))
    assert store.dead_letter_unknown_sinks(["a"]) == 0
    assert store.dead_letter_unknown_sinks([]) == 1


def test_prune_deletes_only_old_finished_things(store):
    """Prune drops delivered rows and terminal actions older than the cutoff, keeping pending, dead and in-flight ones."""
    store.commit_cycle(cycle(snapshots=[snap("old_done", "DONE"), snap("old_flight")], events=[event("old_done")]), now=T0)
    store.commit_cycle(cycle(snapshots=[snap("new_done", "DONE")], events=[event("new_done")]), now=T0 + 100)
    store.enqueue(event("old_dead"), ["a"], now=T0)
    rows = {d.action_id: d for d in store.claim_due(now=T0 + 100, limit=10)}
    store.mark_delivered(rows["old_done"].row_id, now=T0 + 1)
    store.mark_delivered(rows["new_done"].row_id, now=T0 + 100)
    store.mark_dead(rows["old_dead"].row_id, reason="expired")
    store.record_api_calls([T0, T0 + 100])
    assert store.prune(older_than=T0 + 50) == (1, 1)
    assert set(store.get_snapshots(["old_done", "old_flight", "new_done"])) == {"old_flight", "new_done"}
    assert store.outbox_stats().dead == 1
    assert store.enqueue(event("new_done"), ["a"], now=T0 + 101) == 0, "the newer delivered row is kept"
    assert store.api_calls_since(0) == [T0 + 100]


def test_api_calls_since(store_factory):
    """Recorded request times come back sorted, from the given moment on, after a reopen too."""
    store = store_factory()
    store.record_api_calls([T0 + 3, T0 + 1, T0 + 2])
    store.record_api_calls([T0 + 4])
    store.close()
    again = store_factory()
    assert again.api_calls_since(T0 + 2) == [T0 + 2, T0 + 3, T0 + 4]
    assert again.api_calls_since(T0 + 5) == []


def test_get_snapshots_handles_many_ids(store):
    """Looking up more ids than one query takes returns every stored one and ignores unknown ones."""
    stored = [snap(f"aa_{n:04d}") for n in range(1200)]
    store.commit_cycle(cycle(snapshots=stored), now=T0)
    found = store.get_snapshots([s.id for s in stored] + ["unknown"])
    assert len(found) == 1200
    assert found["aa_0777"] == stored[777]
    assert len(store.in_flight()) == 1200
