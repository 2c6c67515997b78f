"""PostgreSQL only: the shared outbox's claims, migrations under concurrency, the fence, the wake, and no password in errors."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from daemon.errors import LeaseLostError, StoreError
from daemon.model import Event
from daemon.store import AttemptResults, CycleResult, Fence, Stores
from daemon.store.postgres import open_postgres
from daemon.store.postgres_schema import SCHEMA_VERSION

T0 = 1_800_000_000.0
PASSWORD = "pg-Passw0rd-9f3c-never-shown"


def event(n: int) -> Event:
    """Return an event for action ``aa_<n>``."""
    return Event(id=f"evt_{n}", type="async_action.completed", timestamp="2026-11-23T11:00:00.000Z", data={"id": f"aa_{n}"})


async def enqueue(stores: Stores, count: int, *, sinks: tuple[str, ...] = ("a",)) -> None:
    """Queue ``count`` events in one cycle."""
    await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event(n), list(sinks)) for n in range(count)]), now=T0)


@pytest.fixture
async def replicas(pg_url):
    """Two replicas' stores on one database, with the production claim expiry."""
    opened = [await open_postgres(pg_url), await open_postgres(pg_url)]
    yield opened
    for stores in opened:
        await stores.close()


async def test_two_replicas_never_claim_the_same_row(replicas):
    """Replicas claiming at the same time get disjoint rows, and together every due row exactly once."""
    await enqueue(replicas[0], 200, sinks=("a", "b"))

    async def drain(stores: Stores) -> list[int]:
        got: list[int] = []
        while batch := await stores.outbox.claim_due(now=T0, limit=7):
            got += [d.row_id for d in batch]
        return got

    claims = await asyncio.gather(*(drain(stores) for stores in replicas * 3))
    claimed = [row_id for batch in claims for row_id in batch]
    assert len(claimed) == len(set(claimed)) == 400
    assert all(claims), "every drain got some rows: they really ran side by side"


async def test_a_claimed_row_is_held_until_settled_or_released(replicas):
    """A claimed row is invisible to other claims; a retry settles and frees it, a release frees it at once."""
    mine, other = replicas
    await enqueue(mine, 2)
    first, second = await mine.outbox.claim_due(now=T0, limit=10)
    assert first.claim is not None
    assert await other.outbox.claim_due(now=T0 + 1, limit=10) == []
    await mine.outbox.apply_results(
        AttemptResults(retries=[(first.row_id, T0 + 5, "HTTP 503")], released=[second.row_id], claims={first.row_id: first.claim, second.row_id: second.claim}),
        now=T0 + 1,
    )
    assert [d.row_id for d in await other.outbox.claim_due(now=T0 + 1, limit=10)] == [second.row_id]
    assert [d.row_id for d in await other.outbox.claim_due(now=T0 + 5, limit=10)] == [first.row_id]


async def test_an_expired_claim_comes_back_and_a_late_answer_under_it_is_ignored(pg_url):
    """A crashed replica's claim expires; the row goes to another replica, and the first one's late answer changes nothing."""
    crashed, survivor = await open_postgres(pg_url, claim_ttl_s=0.2), await open_postgres(pg_url)
    try:
        await enqueue(crashed, 1)
        [lost] = await crashed.outbox.claim_due(now=T0, limit=10)
        assert await survivor.outbox.claim_due(now=T0, limit=10) == [], "the claim holds until it expires"
        await asyncio.sleep(0.3)
        [taken] = await survivor.outbox.claim_due(now=T0, limit=10)
        assert (taken.row_id, taken.event_id) == (lost.row_id, lost.event_id)
        assert taken.claim != lost.claim
        await crashed.outbox.apply_results(AttemptResults(dead=[(lost.row_id, "late and wrong")], claims={lost.row_id: lost.claim}), now=T0 + 1)
        assert (await survivor.outbox.stats()).dead == 0, "a stale claim settles nothing"
        await survivor.outbox.apply_results(AttemptResults(delivered=[taken.row_id], claims={taken.row_id: taken.claim}), now=T0 + 2)
        stats = await survivor.outbox.stats()
        assert (stats.pending, stats.dead) == (0, 0)
    finally:
        await crashed.close()
        await survivor.close()


async def test_an_extended_claim_outlives_its_expiry(pg_url):
    """A claim extended before it lapses still keeps the row from another replica after its first expiry has passed."""
    sending, waiting = await open_postgres(pg_url, claim_ttl_s=0.4), await open_postgres(pg_url)
    try:
        await enqueue(sending, 2)
        kept, dropped = await sending.outbox.claim_due(now=T0, limit=10)
        assert kept.claim is not None
        await asyncio.sleep(0.25)
        await sending.outbox.extend_claims({kept.row_id: kept.claim, dropped.row_id: "not-its-token"})
        await asyncio.sleep(0.25)
        assert [d.row_id for d in await waiting.outbox.claim_due(now=T0, limit=10)] == [dropped.row_id], "only the extended claim holds"
    finally:
        await sending.close()
        await waiting.close()


async def test_replicas_opening_an_empty_database_together_migrate_it_once(pg_url):
    """Five replicas opening an empty database at once all open, and every migration is recorded exactly once."""
    results = await asyncio.gather(*(open_postgres(pg_url) for _ in range(5)), return_exceptions=True)
    opened = [r for r in results if isinstance(r, Stores)]
    try:
        assert len(opened) == 5, [str(r) for r in results if not isinstance(r, Stores)]
        assert [await s.schema_version() for s in opened] == [SCHEMA_VERSION] * 5
    finally:
        for stores in opened:
            await stores.close()
    with psycopg.connect(pg_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_a_database_from_a_newer_relay_is_refused(pg_url):
    """A schema version above this relay's is refused with an error naming both versions."""
    stores = await open_postgres(pg_url)
    await stores.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} is newer than this relay understands \({SCHEMA_VERSION}\)"):
        await open_postgres(pg_url)


async def test_a_commit_under_a_lost_lease_writes_nothing(pg_url):
    """A cycle committed with a fence the lease no longer matches raises LeaseLostError and leaves no row behind."""
    stores = await open_postgres(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO relay_lease VALUES ('poller', 'replica-b', 2, now() + interval '10 seconds', now())")
        held = Fence(name="poller", holder="replica-b", term=2)
        assert await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event(1), ["a"])]), now=T0, fence=held) == 1
        for stale in (Fence(name="poller", holder="replica-a", term=1), Fence(name="poller", holder="replica-b", term=1)):
            with pytest.raises(LeaseLostError, match="term 1"):
                await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event(2), ["a"])], baseline_done=True), now=T0, fence=stale)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE relay_lease SET expires_at = now() - interval '1 second'")
        with pytest.raises(LeaseLostError):
            await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event(3), ["a"])]), now=T0, fence=held)
        assert (await stores.outbox.stats()).pending == 1
        assert (await stores.actions.load_cursor()).first_run
    finally:
        await stores.close()


async def test_an_enqueue_on_one_replica_wakes_the_others(pg_url):
    """A commit that enqueues rows sets every listening replica's wake event; a commit that enqueues nothing does not."""
    listening, writer = await open_postgres(pg_url, listen=True), await open_postgres(pg_url)
    try:
        assert listening.wake is not None
        await asyncio.wait_for(listening.wake.wait(), 5)  # set once when listening starts
        listening.wake.clear()
        await writer.actions.commit_cycle(CycleResult(snapshots=[], events=[], newest_created_at="2026-11-23T11:00:00.000Z"), now=T0)
        await asyncio.sleep(0.2)
        assert not listening.wake.is_set()
        await enqueue(writer, 1)
        await asyncio.wait_for(listening.wake.wait(), 2)
    finally:
        await listening.close()
        await writer.close()


async def test_database_errors_name_the_database_but_never_the_password(pg_url):
    """A refused connection with a password in the URL names user, host, port and database, never the password."""
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@").replace(":5432/", ":1/")
    with pytest.raises(StoreError) as caught:
        await open_postgres(url)
    message = str(caught.value)
    assert "postgresql://postgres@127.0.0.1:1/" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(caught.value)
    assert caught.value.__cause__ is None, "the driver's error (and its conninfo) is not chained"


async def test_a_version_2_database_is_upgraded_and_its_state_belongs_to_the_default_project(pg_url):
    """A database migrated by the single-project relay (version 2) gains the project columns; its rows are the project default's."""
    from daemon.store.postgres_schema import MIGRATIONS  # noqa: PLC0415 - only this test replays old steps

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for version, steps in enumerate(MIGRATIONS[:2], start=1):
            for step in steps:
                conn.execute(step)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO actions VALUES ('aa_1', 'CUSTOMERS.IMPORT_CSV', 'IN_PROGRESS', NULL, 40, NULL, NULL, false, 1.0, false)")
        conn.execute("INSERT INTO meta VALUES ('baseline_done', '1')")
        conn.execute("INSERT INTO api_calls VALUES (%s)", (T0,))
    stores = await open_postgres(pg_url)
    try:
        assert await stores.schema_version() == SCHEMA_VERSION
        assert not (await stores.actions.load_cursor()).first_run
        assert list(await stores.actions.in_flight()) == ["aa_1"]
        assert await stores.calls.since(0) == [T0]
        eu = stores.for_project("eu")
        assert (await eu.actions.load_cursor()).first_run
        assert await eu.actions.in_flight() == {}
    finally:
        await stores.close()
