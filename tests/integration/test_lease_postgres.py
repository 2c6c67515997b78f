"""The polling lease's SQL against a real PostgreSQL database: grant, renew, expiry, takeover, release."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from daemon.errors import StoreError
from daemon.store.postgres_lease import PostgresLeaseStore

LEASE_TABLE = """
CREATE TABLE IF NOT EXISTS relay_lease (
    name text PRIMARY KEY, holder text NOT NULL, term bigint NOT NULL,
    expires_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL
)
"""


@pytest.fixture(scope="module")
def pg_lease_url(pg_database):
    """Create the lease table in this module's database (each test uses its own lease name)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(LEASE_TABLE)
    return pg_database


@pytest.fixture
def name():
    """Name a lease no other test uses."""
    return f"poll-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def leases(pg_lease_url):
    """Two replicas' lease stores on one database."""
    a, b = PostgresLeaseStore(pg_lease_url), PostgresLeaseStore(pg_lease_url)
    yield a, b
    await a.close()
    await b.close()


async def test_first_replica_gets_term_one_and_the_other_is_refused(leases, name):
    """The first asker gets term 1 valid for about the TTL; a second replica gets nothing while it runs."""
    a, b = leases
    lease = await a.acquire_or_renew(name=name, holder="a", ttl_s=10)
    assert lease is not None
    assert lease.term == 1
    assert 9.0 < lease.valid_for_s <= 10.0
    assert await b.acquire_or_renew(name=name, holder="b", ttl_s=10) is None


async def test_renewal_keeps_the_term_and_extends_the_expiry(leases, name):
    """The holder renewing before expiry keeps its term and gets a fresh TTL."""
    a, _ = leases
    await a.acquire_or_renew(name=name, holder="a", ttl_s=1)
    await asyncio.sleep(0.3)
    renewed = await a.acquire_or_renew(name=name, holder="a", ttl_s=1)
    assert renewed is not None
    assert renewed.term == 1
    assert renewed.valid_for_s > 0.9


async def test_an_expired_lease_passes_to_another_replica_with_the_next_term(leases, name):
    """After the expiry (by the database clock) another replica takes the lease as term 2, and the old holder is refused."""
    a, b = leases
    await a.acquire_or_renew(name=name, holder="a", ttl_s=0.3)
    await asyncio.sleep(0.4)
    taken = await b.acquire_or_renew(name=name, holder="b", ttl_s=10)
    assert taken is not None
    assert taken.term == 2
    assert await a.acquire_or_renew(name=name, holder="a", ttl_s=10) is None


async def test_a_holder_renewing_after_its_own_expiry_starts_a_new_term(leases, name):
    """A paused holder that renews after its lease ran out gets a new term, so fences of its old term fail."""
    a, _ = leases
    await a.acquire_or_renew(name=name, holder="a", ttl_s=0.2)
    await asyncio.sleep(0.3)
    again = await a.acquire_or_renew(name=name, holder="a", ttl_s=10)
    assert again is not None
    assert again.term == 2


async def test_release_hands_the_lease_over_at_once(leases, name):
    """A released lease is granted to the next replica immediately, not after the TTL."""
    a, b = leases
    lease = await a.acquire_or_renew(name=name, holder="a", ttl_s=30)
    assert lease is not None
    await a.release(lease)
    taken = await b.acquire_or_renew(name=name, holder="b", ttl_s=30)
    assert taken is not None
    assert taken.term == 2


async def test_a_stale_release_does_not_end_the_new_holders_lease(leases, name):
    """Releasing an old term after another replica took over leaves the new holder's lease alone."""
    a, b = leases
    old = await a.acquire_or_renew(name=name, holder="a", ttl_s=0.2)
    assert old is not None
    await asyncio.sleep(0.3)
    assert await b.acquire_or_renew(name=name, holder="b", ttl_s=30) is not None
    await a.release(old)
    assert await a.acquire_or_renew(name=name, holder="a", ttl_s=30) is None


async def test_simultaneous_askers_get_exactly_one_lease(pg_lease_url, name):
    """Ten replicas asking at the same moment: exactly one is granted."""
    stores = [PostgresLeaseStore(pg_lease_url) for _ in range(10)]
    try:
        answers = await asyncio.gather(*(s.acquire_or_renew(name=name, holder=f"r{i}", ttl_s=10) for i, s in enumerate(stores)))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert sum(a is not None for a in answers) == 1


async def test_a_read_only_server_counts_as_a_failed_renewal(pg_lease_url, name):
    """A server answering read-only (a standby, a demoted primary) raises StoreError, never a grant."""
    store = PostgresLeaseStore(pg_lease_url + "?options=-c%20default_transaction_read_only%3Don")
    try:
        with pytest.raises(StoreError, match="ReadOnlySqlTransaction"):
            await store.acquire_or_renew(name=name, holder="a", ttl_s=10)
    finally:
        await store.close()


async def test_an_unreachable_database_raises_store_error_without_the_password(name):
    """A refused connection is a StoreError naming the cause, never the password in the URL."""
    store = PostgresLeaseStore("postgresql://relay:hunter2-secret@127.0.0.1:9/none", connect_timeout_s=2)
    with pytest.raises(StoreError) as caught:
        await store.acquire_or_renew(name=name, holder="a", ttl_s=10)
    assert "hunter2" not in str(caught.value)
    assert "cannot renew the lease" in str(caught.value)
