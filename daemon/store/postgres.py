"""``open_postgres``: the store ports on one PostgreSQL database, shared by any number of replicas.

Why psycopg 3 with psycopg_pool: a maintained driver with native asyncio, LISTEN/NOTIFY,
pipeline mode (``executemany`` sends a batch in one round trip) and a pool that checks
and replaces broken connections; it talks plain libpq, so ``sslmode``, ``PGPASSWORD``
and ``PGPASSFILE`` work as every PostgreSQL user expects.
"""

from __future__ import annotations

from daemon.errors import StoreError
from daemon.store import CLAIM_TTL_S, Stores
from daemon.store.postgres_actions import PostgresActionStore, PostgresCallLog
from daemon.store.postgres_db import PostgresDatabase
from daemon.store.postgres_listen import OutboxListener
from daemon.store.postgres_messages import PostgresMessageRefs
from daemon.store.postgres_outbox import PostgresOutbox


async def open_postgres(
    url: str,
    *,
    listen: bool = False,
    migrate: bool = True,
    claim_ttl_s: float = CLAIM_TTL_S,
    min_size: int = 1,
    max_size: int = 4,
) -> Stores:
    """Connect, apply the migrations (unless ``migrate`` is False), and return the ports; ``listen`` starts the outbox wake."""
    database = PostgresDatabase(url, min_size=min_size, max_size=max_size)
    version = await database.open(migrate_schema=migrate)
    if version == 0:
        await database.close()
        msg = f"state database {database.display} has no relay tables yet (RELAY_STATE_URL); the relay creates them on its first run"
        raise StoreError(msg)
    listener = OutboxListener(database) if listen else None
    if listener is not None:
        listener.start()

    async def close() -> None:
        if listener is not None:
            await listener.close()
        await database.close()

    def scope(project: str) -> tuple[PostgresActionStore, PostgresCallLog]:
        return PostgresActionStore(database, project=project), PostgresCallLog(database, project=project)

    return Stores(
        scope=scope,
        actions=PostgresActionStore(database),
        outbox=PostgresOutbox(database, claim_ttl_s=claim_ttl_s),
        calls=PostgresCallLog(database),
        messages=PostgresMessageRefs(database),
        location=database.display,
        close=close,
        file_problem=lambda: None,
        schema_version=database.schema_version,
        kind="postgres",
        wake=None if listener is None else listener.wake,
        database=database,
    )
