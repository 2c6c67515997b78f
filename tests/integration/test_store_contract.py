"""The store ports' contract (daemon/store/__init__.py), run against every adapter.

Each adapter is an entry of ``ADAPTERS``: a callable taking the test's request and
returning an async factory that opens (or reopens) the adapter's ``Stores`` at one
location: a SQLite file in ``tmp_path``, or a fresh PostgreSQL database (``pg_url``).
PostgreSQL runs with a claim expiry of zero here, so a claimed row is claimable again at
once, as on SQLite; the shared outbox's claims have tests of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from daemon.model import ActionSnapshot, Event
from daemon.store import AttemptResults, CycleResult, MessageRef, Stores
from daemon.store.postgres import open_postgres
from daemon.store.sqlite import open_sqlite

T0 = 1_800_000_000.0


Factory = Callable[[], Awaitable[Stores]]


def sqlite_stores(request: pytest.FixtureRequest) -> Factory:
    """Return a factory opening the SQLite stores in the test's ``tmp_path``."""
    path = request.getfixturevalue("tmp_path") / "state.db"

    async def make() -> Stores:
        return open_sqlite(path)

    return make


def postgres_stores(request: pytest.FixtureRequest) -> Factory:
    """Return a factory opening the PostgreSQL stores on the test's own database."""
    url = request.getfixturevalue("pg_url")
    return lambda: open_postgres(url, claim_ttl_s=0)


ADAPTERS = {"sqlite": sqlite_stores, "postgres": postgres_stores}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else []) for name in sorted(ADAPTERS)])
async def stores_factory(request) -> AsyncIterator[Factory]:
    """Open stores of one adapter at one location; close every one opened."""
    make = ADAPTERS[request.param](request)
    opened: list[Stores] = []

    async def factory() -> Stores:
        opened.append(await make())
        return opened[-1]

    yield factory
    for stores in opened:
        await stores.close()


@pytest.fixture
async def stores(stores_factory) -> Stores:
    """Open fresh stores."""
    return await stores_factory()


def snap(action_id: str, status: str = "IN_PROGRESS", *, created: str = "2026-11-23T11:00:00.000Z") -> ActionSnapshot:
    """Return a snapshot of one action."""
    return ActionSnapshot(id=action_id, type="CUSTOMERS.IMPORT_CSV", status=status, operation_status=None, progress=50, created_at=created, updated_at=created)


def event(action_id: str, event_type: str = "async_action.completed") -> Event:
    """Return an event for one action."""
    return Event(id=f"evt_{action_id}_{event_type[-6:]}", type=event_type, timestamp="2026-11-23T11:00:00.000Z", data={"id": action_id})


def cycle(*, snapshots: Sequence[ActionSnapshot] = (), events: Sequence[Event] = (), sinks: Sequence[str] = ("a",), **more) -> CycleResult:
    """Return a cycle result routing every event to ``sinks``."""
    return CycleResult(snapshots=snapshots, events=[(e, list(sinks)) for e in events], **more)


async def enqueue(stores: Stores, event_: Event, sinks: Sequence[str], *, now: float) -> int:
    """Queue one event for ``sinks`` the way the poller does: in a cycle of its own."""
    return await stores.actions.commit_cycle(cycle(events=[event_], sinks=sinks), now=now)


class ExplodingEvents(list):
    """An events list that fails midway through iteration, as a crash inside the transaction would."""

    def __iter__(self):
        yield from list.__iter__(self)
        msg = "boom inside commit_cycle"
        raise RuntimeError(msg)


async def test_a_fresh_store_is_empty(stores):
    """New stores have no baseline, no actions, no outbox rows and no API calls."""
    cursor = await stores.actions.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at, cursor.backlog) == (True, None, None)
    assert await stores.actions.in_flight() == {}
    assert await stores.outbox.claim_due(now=T0, limit=10) == []
    stats = await stores.outbox.stats()
    assert (stats.pending, stats.dead, stats.oldest_pending_created_at) == (0, 0, None)
    assert await stores.calls.since(0) == []


async def test_commit_cycle_persists_everything_across_reopen(stores_factory):
    """Snapshots, forgotten ids, outbox rows per sink and the cursor survive closing and reopening."""
    stores = await stores_factory()
    await stores.actions.commit_cycle(cycle(snapshots=[snap("aa_1"), snap("aa_2")]), now=T0)
    finished = cycle(
        snapshots=[snap("aa_1", "DONE")],
        events=[event("aa_1")],
        sinks=["a", "b"],
        forgotten=["aa_2"],
        newest_created_at="2026-11-23T11:00:00.000Z",
        baseline_done=True,
    )
    assert await stores.actions.commit_cycle(finished, now=T0 + 1) == 2
    await stores.close()
    again = await stores_factory()
    cursor = await again.actions.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at) == (False, "2026-11-23T11:00:00.000Z")
    assert await again.actions.in_flight() == {}
    assert await again.actions.get_snapshots(["aa_1", "aa_2"]) == {"aa_1": snap("aa_1", "DONE")}
    assert sorted(d.sink for d in await again.outbox.claim_due(now=T0 + 1, limit=10)) == ["a", "b"]


async def test_an_exception_inside_commit_cycle_rolls_everything_back(stores):
    """A failure midway through a cycle's commit leaves no snapshot, no outbox row and no cursor change."""
    await stores.actions.commit_cycle(cycle(snapshots=[snap("aa_0")], newest_created_at="2026-11-23T10:00:00.000Z"), now=T0)
    broken = CycleResult(
        snapshots=[snap("aa_1", "DONE"), snap("aa_0", "DONE")],
        events=ExplodingEvents([(event("aa_1"), ["a"])]),
        forgotten=["aa_0"],
        newest_created_at="2026-11-23T11:00:00.000Z",
        baseline_done=True,
    )
    with pytest.raises(RuntimeError, match="boom"):
        await stores.actions.commit_cycle(broken, now=T0 + 1)
    assert await stores.actions.get_snapshots(["aa_0", "aa_1"]) == {"aa_0": snap("aa_0")}
    assert await stores.outbox.claim_due(now=T0 + 10, limit=10) == []
    cursor = await stores.actions.load_cursor()
    assert (cursor.first_run, cursor.newest_created_at) == (True, "2026-11-23T10:00:00.000Z")


async def test_an_unserializable_event_rolls_back_the_events_before_it(stores):
    """If the second event of a cycle cannot be stored, the first one's rows are not stored either."""
    bad = Event(id="evt_bad", type="async_action.completed", timestamp="x", data={"id": "aa_2", "oops": object()})
    with pytest.raises(TypeError):
        await stores.actions.commit_cycle(cycle(snapshots=[snap("aa_1", "DONE")], events=[event("aa_1"), bad]), now=T0)
    assert (await stores.outbox.stats()).pending == 0
    assert await stores.actions.get_snapshots(["aa_1"]) == {}


async def test_enqueue_is_idempotent_per_event_and_sink(stores):
    """The same event for the same sink is stored once, whether it comes again in a later cycle or after delivery."""
    assert await enqueue(stores, event("aa_1"), ["a"], now=T0) == 1
    assert await enqueue(stores, event("aa_1"), ["a"], now=T0 + 1) == 0
    assert await enqueue(stores, event("aa_1"), ["a", "b"], now=T0 + 2) == 1
    [delivery] = await stores.outbox.claim_due(now=T0 + 5, limit=10, sink="a")
    await stores.outbox.apply_results(AttemptResults(delivered=[delivery.row_id]), now=T0 + 6)
    assert await enqueue(stores, event("aa_1"), ["a"], now=T0 + 7) == 0, "a delivered event is not queued again"
    assert await enqueue(stores, event("aa_1", "async_action.failed"), ["a"], now=T0 + 8) == 1, "another event type is another event"


async def test_claim_due_orders_by_due_time_and_filters_by_sink(stores):
    """Only due pending rows are claimed, earliest due first then oldest row, at most ``limit``, optionally for one sink."""
    outbox = stores.outbox
    for n, sink in enumerate(["a", "b", "a", "b", "a"]):
        await enqueue(stores, event(f"aa_{n}"), [sink], now=T0 + n)
    rows = {d.action_id: d for d in await outbox.claim_due(now=T0 + 10, limit=10)}
    await outbox.apply_results(AttemptResults(retries=[(rows["aa_0"].row_id, T0 + 100, "HTTP 503")]), now=T0 + 10)
    assert [d.action_id for d in await outbox.claim_due(now=T0 + 10, limit=10)] == ["aa_1", "aa_2", "aa_3", "aa_4"]
    assert [d.action_id for d in await outbox.claim_due(now=T0 + 10, limit=2)] == ["aa_1", "aa_2"]
    assert [d.action_id for d in await outbox.claim_due(now=T0 + 10, limit=10, sink="a")] == ["aa_2", "aa_4"]
    assert [d.action_id for d in await outbox.claim_due(now=T0 + 2.5, limit=10)] == ["aa_1", "aa_2"]
    assert [d.action_id for d in await outbox.claim_due(now=T0 + 100, limit=10, sink="a")] == ["aa_2", "aa_4", "aa_0"]
    assert await outbox.claim_due(now=T0 + 10, limit=10, sink="nobody") == []


async def test_claim_due_leaves_out_the_rows_it_is_told_to_skip(stores):
    """Rows a dispatcher already holds (passed as ``skip``) are never handed out again, whatever is due."""
    outbox = stores.outbox
    for n in range(4):
        await enqueue(stores, event(f"aa_{n}"), ["a"], now=T0 + n)
    first = await outbox.claim_due(now=T0 + 10, limit=2)
    assert [d.action_id for d in first] == ["aa_0", "aa_1"]
    rest = await outbox.claim_due(now=T0 + 10, limit=10, skip=[d.row_id for d in first])
    assert [d.action_id for d in rest] == ["aa_2", "aa_3"]
    assert await outbox.claim_due(now=T0 + 10, limit=10, skip=[d.row_id for d in first + rest]) == []


async def test_a_claimed_delivery_carries_the_event(stores):
    """A claimed row holds the event id, type, sink, action id, exact body and attempt count."""
    sent = event("aa_1")
    await enqueue(stores, sent, ["a"], now=T0)
    [delivery] = await stores.outbox.claim_due(now=T0, limit=1)
    assert (delivery.event_id, delivery.event_type, delivery.sink, delivery.action_id) == (sent.id, sent.type, "a", "aa_1")
    assert delivery.body == sent.body()
    assert (delivery.attempts, delivery.created_at) == (0, T0)


async def test_retries_dead_letters_and_replay(stores):
    """Failures count attempts; a dead row leaves the queue until replay makes it pending and due again."""
    outbox = stores.outbox
    await enqueue(stores, event("aa_1"), ["a"], now=T0)
    await enqueue(stores, event("aa_2"), ["a"], now=T0)
    first, second = await outbox.claim_due(now=T0, limit=10)
    await outbox.apply_results(AttemptResults(retries=[(first.row_id, T0 + 5, "HTTP 503")]), now=T0)
    await outbox.apply_results(AttemptResults(retries=[(first.row_id, T0 + 9, "timed out")]), now=T0 + 5)
    [pending_first] = [r for r in await outbox.list(dead=False) if r.row_id == first.row_id]
    assert (pending_first.attempts, pending_first.next_attempt_at, pending_first.last_error) == (2, T0 + 9, "timed out")
    await outbox.apply_results(AttemptResults(dead=[(first.row_id, "HTTP 410: endpoint gone"), (second.row_id, "expired")]), now=T0 + 9)
    assert await outbox.claim_due(now=T0 + 100, limit=10) == []
    dead = await outbox.list(dead=True)
    assert [r.row_id for r in dead] == [second.row_id, first.row_id], "newest first"
    assert dead[1].last_error == "HTTP 410: endpoint gone"
    assert (await outbox.stats()).dead == 2
    assert await outbox.replay(first.row_id, now=T0 + 200) == 1
    [revived] = await outbox.claim_due(now=T0 + 200, limit=10)
    assert (revived.row_id, revived.attempts, revived.created_at) == (first.row_id, 0, T0 + 200)
    assert await outbox.replay(None, now=T0 + 300) == 1
    assert await outbox.replay(None, now=T0 + 300) == 0
    assert await outbox.replay(999_999, now=T0) == 0
    assert (await outbox.stats()).dead == 0


async def test_list_is_newest_first_and_limited(stores):
    """Pending rows list newest first, up to the limit, without the delivered ones."""
    outbox = stores.outbox
    for n in range(5):
        await enqueue(stores, event(f"aa_{n}"), ["a"], now=T0 + n)
    [oldest, *_] = await outbox.claim_due(now=T0 + 10, limit=1)
    await outbox.apply_results(AttemptResults(delivered=[oldest.row_id]), now=T0 + 10)
    listed = await outbox.list(dead=False, limit=3)
    assert [r.action_id for r in listed] == ["aa_4", "aa_3", "aa_2"]
    assert all(r.status == "pending" for r in listed)
    assert "aa_0" not in {r.action_id for r in await outbox.list(dead=False)}
    stats = await outbox.stats()
    assert (stats.pending, stats.oldest_pending_created_at) == (4, T0 + 1)


async def test_dead_letter_unknown_sinks(stores):
    """Pending rows for sinks no longer configured are dead-lettered with a reason naming the sink; others stay."""
    outbox = stores.outbox
    await enqueue(stores, event("aa_1"), ["a", "gone"], now=T0)
    await enqueue(stores, event("aa_2"), ["gone"], now=T0)
    assert await outbox.dead_letter_unknown_sinks(["a"]) == 2
    assert [d.sink for d in await outbox.claim_due(now=T0, limit=10)] == ["a"]
    assert all("gone" in (r.last_error or "") for r in await outbox.list(dead=True))
    assert await outbox.dead_letter_unknown_sinks(["a"]) == 0
    assert await outbox.dead_letter_unknown_sinks([]) == 1


async def test_prune_deletes_only_old_finished_things(stores):
    """Each port's prune drops only what is old and finished: delivered rows, terminal actions, API call times."""
    actions, outbox = stores.actions, stores.outbox
    await actions.commit_cycle(cycle(snapshots=[snap("old_done", "DONE"), snap("old_flight")], events=[event("old_done")]), now=T0)
    await actions.commit_cycle(cycle(snapshots=[snap("new_done", "DONE")], events=[event("new_done")]), now=T0 + 100)
    await enqueue(stores, event("old_dead"), ["a"], now=T0)
    rows = {d.action_id: d for d in await outbox.claim_due(now=T0 + 100, limit=10)}
    await outbox.apply_results(AttemptResults(delivered=[rows["old_done"].row_id]), now=T0 + 1)
    await outbox.apply_results(AttemptResults(delivered=[rows["new_done"].row_id], dead=[(rows["old_dead"].row_id, "expired")]), now=T0 + 100)
    await stores.calls.record([T0, T0 + 100])
    assert await outbox.prune(older_than=T0 + 50) == 1
    assert await actions.prune(older_than=T0 + 50) == 1
    assert await stores.calls.prune(older_than=T0 + 50) == 1
    assert set(await actions.get_snapshots(["old_done", "old_flight", "new_done"])) == {"old_flight", "new_done"}
    assert (await outbox.stats()).dead == 1
    assert await enqueue(stores, event("new_done"), ["a"], now=T0 + 101) == 0, "the newer delivered row is kept"
    assert await stores.calls.since(0) == [T0 + 100]


async def test_call_log_since(stores_factory):
    """Recorded request times come back sorted, from the given moment on, after a reopen too."""
    stores = await stores_factory()
    await stores.calls.record([T0 + 3, T0 + 1, T0 + 2])
    await stores.calls.record([T0 + 4])
    await stores.close()
    again = await stores_factory()
    assert await again.calls.since(T0 + 2) == [T0 + 2, T0 + 3, T0 + 4]
    assert await again.calls.since(T0 + 5) == []


async def test_meta_values_persist_across_reopen(stores_factory):
    """A saved meta value (a Retry-After deadline, say) is read back after a reopen; an unknown key reads None."""
    stores = await stores_factory()
    await stores.actions.save_meta("api_blocked_until", "123.000")
    await stores.actions.save_meta("api_blocked_until", "456.000")
    await stores.close()
    again = await stores_factory()
    assert await again.actions.load_meta("api_blocked_until") == "456.000"
    assert await again.actions.load_meta("nothing") is None


async def test_get_snapshots_handles_many_ids(stores):
    """Looking up more ids than one query takes returns every stored one and ignores unknown ones."""
    stored = [snap(f"aa_{n:04d}") for n in range(1200)]
    await stores.actions.commit_cycle(cycle(snapshots=stored), now=T0)
    found = await stores.actions.get_snapshots([s.id for s in stored] + ["unknown"])
    assert len(found) == 1200
    assert found["aa_0777"] == stored[777]
    assert len(await stores.actions.in_flight()) == 1200


async def test_message_refs_remember_advance_and_prune(stores_factory):
    """A live message's place survives a reopen, advances in stage, and is pruned once old."""
    stores = await stores_factory()
    assert await stores.messages.get("team", "aa_1") is None
    await stores.messages.put("team", "aa_1", MessageRef(channel="C1", ts="1.000100", stage="live"), now=T0)
    await stores.messages.put("team", "aa_2", MessageRef(channel="C1", ts="1.000200", stage="live"), now=T0 + 100)
    await stores.close()
    stores = await stores_factory()
    await stores.messages.put("team", "aa_1", MessageRef(channel="C1", ts="1.000100", stage="final"), now=T0 + 10)
    assert await stores.messages.get("team", "aa_1") == MessageRef(channel="C1", ts="1.000100", stage="final")
    assert await stores.messages.get("other", "aa_1") is None, "refs are per sink"
    assert await stores.messages.prune(older_than=T0 + 50) == 1
    assert await stores.messages.get("team", "aa_1") is None
    assert await stores.messages.get("team", "aa_2") is not None
    await stores.close()
