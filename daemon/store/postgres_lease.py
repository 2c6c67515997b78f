"""PostgresLeaseStore: the polling lease as one row of ``relay_lease``, on a connection of its own.

Its own connection, not the store's pool: a pool busy with deliveries must never delay a
renewal past the lease. Each attempt is one autocommitted statement judged by the
database's ``now()``; any failure (refused connection, timeout, a read-only or
in-recovery server) closes the connection, raises :class:`StoreError`, and the next
attempt reconnects. The connection URL never appears in an error or a repr.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from daemon.errors import StoreError
from daemon.lease import Lease

STATEMENT_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5
ERROR_CHARS = 200

# With acquire false only a live lease of this holder is renewed: a replica at its fair share
# neither takes a free lease nor creates a missing one (the EXISTS keeps the upsert's renewal).
ACQUIRE = """
INSERT INTO relay_lease AS lease (name, holder, term, expires_at, renewed_at)
SELECT %(name)s, %(holder)s, 1, now() + make_interval(secs => %(ttl_s)s), now()
WHERE %(acquire)s OR EXISTS (SELECT 1 FROM relay_lease WHERE name = %(name)s AND holder = %(holder)s)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    term = CASE WHEN lease.holder = excluded.holder AND lease.expires_at > now() THEN lease.term ELSE lease.term + 1 END,
    expires_at = excluded.expires_at,
    renewed_at = excluded.renewed_at
WHERE (lease.holder = excluded.holder AND lease.expires_at > now()) OR (%(acquire)s AND lease.expires_at <= now())
RETURNING term, extract(epoch FROM expires_at - now())::float8
"""
# A replica's membership row (name member:<replica id>): renewed with each heartbeat, it counts the
# live replicas so project leases spread over them. The CTE's insert is not visible to the count.
HEARTBEAT = """
WITH beat AS (
    INSERT INTO relay_lease AS lease (name, holder, term, expires_at, renewed_at)
    VALUES ('member:' || %(holder)s, %(holder)s, 1, now() + make_interval(secs => %(ttl_s)s), now())
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, renewed_at = excluded.renewed_at
    RETURNING 1
)
SELECT 1 + count(*) FROM relay_lease WHERE name LIKE 'member:%%' AND name <> 'member:' || %(holder)s AND expires_at > now()
"""
LEAVE = "UPDATE relay_lease SET expires_at = now() WHERE name = 'member:' || %(holder)s"

RELEASE = "UPDATE relay_lease SET expires_at = now() WHERE name = %(name)s AND holder = %(holder)s AND term = %(term)s"


class PostgresLeaseStore:
    """Grants, renews and releases leases in ``relay_lease``."""

    def __init__(self, conninfo: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> None:
        self._conninfo = conninfo
        timeouts = f"-c statement_timeout={statement_timeout_ms} -c idle_in_transaction_session_timeout={statement_timeout_ms}"
        self._options = " ".join(filter(None, [str(conninfo_to_dict(conninfo).get("options") or ""), timeouts]))  # keep the URL's own options
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "PostgresLeaseStore()"

    async def acquire_or_renew(self, *, name: str, holder: str, ttl_s: float, acquire: bool = True) -> Lease | None:
        """Take (``acquire``) or keep the lease; None when another replica holds it unexpired, or it is free and ``acquire`` is False."""
        row = await self._run(ACQUIRE, {"name": name, "holder": holder, "ttl_s": ttl_s, "acquire": acquire}, what="renew the lease")
        if row is None:
            return None
        return Lease(name=name, holder=holder, term=int(row[0]), valid_for_s=float(row[1]))

    async def release(self, lease: Lease) -> None:
        """End the lease now (only if it is still this holder's term)."""
        await self._run(RELEASE, {"name": lease.name, "holder": lease.holder, "term": lease.term}, what="release the lease")

    async def heartbeat(self, *, holder: str, ttl_s: float) -> int:
        """Renew this replica's membership for ``ttl_s``; return how many replicas are live, this one included."""
        row = await self._run(HEARTBEAT, {"holder": holder, "ttl_s": ttl_s}, what="renew the membership")
        return int(row[0]) if row else 1

    async def leave(self, *, holder: str) -> None:
        """End this replica's membership now (a clean stop), so the others' shares grow at once."""
        await self._run(LEAVE, {"holder": holder}, what="end the membership")

    async def close(self) -> None:
        """Close the connection."""
        await self._drop()

    async def _run(self, sql: str, params: dict[str, Any], *, what: str) -> tuple[Any, ...] | None:
        async with self._lock:
            try:
                conn = await self._connection()
                cursor = await conn.execute(sql, params)
                return await cursor.fetchone() if cursor.description else None
            except psycopg.Error as exc:
                await self._drop()
                raise StoreError(f"cannot {what}: {_cause(exc)}") from None
            except BaseException:  # a cancelled query leaves the connection in an unknown state
                await self._drop()
                raise

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout_s, options=self._options, application_name="voucherify-relay-lease"
            )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _cause(exc: psycopg.Error) -> str:
    """Name the failure without the connection string (libpq messages name host and user, never the password)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    sqlstate = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{sqlstate}: {first}"[:ERROR_CHARS]
