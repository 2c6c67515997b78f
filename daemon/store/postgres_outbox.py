"""PostgresOutbox: the Outbox port shared by every replica on one PostgreSQL database.

``claim_due`` hands each due row to one replica: it stamps the rows it takes with a fresh
claim token and an expiry (``FOR UPDATE SKIP LOCKED``, so replicas claiming at the same
moment skip each other's rows instead of waiting). A replica that dies mid-send leaves
its claims to expire, and the rows come back to whoever claims next; a replica still
sending a row pushes its expiry on (``extend_claims``), so a short expiry never hands a row
that is still being sent to another replica. ``apply_results``
settles a row only while it still carries the token it was claimed with, so a late answer
to a row that another replica has since claimed changes nothing.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from daemon.model import Delivery
from daemon.store import CLAIM_TTL_S, AttemptResults, OutboxRow, OutboxStats
from daemon.store.postgres_actions import NOTIFY_CHANNEL
from daemon.store.postgres_db import Connection, PostgresDatabase

_OUTBOX_COLUMNS = "row_id, event_id, event_type, sink, action_id, status, attempts, created_at, next_attempt_at, last_error, project"
_CLAIM = """
WITH due AS MATERIALIZED (
    SELECT row_id FROM outbox
    WHERE status = 'pending' AND next_attempt_at <= %(now)s
      AND (claim_expires_at IS NULL OR claim_expires_at <= now())
      AND (%(sink)s::text IS NULL OR sink = %(sink)s)
      AND NOT (row_id = ANY(%(skip)s::bigint[]))
    ORDER BY next_attempt_at, row_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET claim_token = %(token)s, claim_expires_at = now() + make_interval(secs => %(ttl)s)
FROM due WHERE o.row_id = due.row_id
RETURNING o.row_id, o.event_id, o.event_type, o.sink, o.action_id, o.body, o.attempts, o.created_at, o.project, o.next_attempt_at
"""
# One statement settles a whole group of answers (one round trip, one plan, atomic like a transaction). A row settles
# only with its claim token; without one (operator tools, tests) it settles as on SQLite. Released rows wake the others.
_SETTLE = """
WITH delivered AS (
    UPDATE outbox o SET status='delivered', attempts=attempts+1, finished_at=%(now)s, last_error=NULL, claim_token=NULL, claim_expires_at=NULL
    FROM unnest(%(d_rows)s::bigint[], %(d_claims)s::text[]) AS a(row_id, claim)
    WHERE o.row_id = a.row_id AND (a.claim IS NULL OR o.claim_token = a.claim) RETURNING 1
), retried AS (
    UPDATE outbox o SET attempts=attempts+1, next_attempt_at=a.at, last_error=a.error, claim_token=NULL, claim_expires_at=NULL
    FROM unnest(%(r_rows)s::bigint[], %(r_at)s::float8[], %(r_errors)s::text[], %(r_claims)s::text[]) AS a(row_id, at, error, claim)
    WHERE o.row_id = a.row_id AND (a.claim IS NULL OR o.claim_token = a.claim) RETURNING 1
), dead AS (
    UPDATE outbox o SET status='dead', attempts=attempts+1, next_attempt_at=NULL, last_error=a.error, claim_token=NULL, claim_expires_at=NULL
    FROM unnest(%(x_rows)s::bigint[], %(x_errors)s::text[], %(x_claims)s::text[]) AS a(row_id, error, claim)
    WHERE o.row_id = a.row_id AND (a.claim IS NULL OR o.claim_token = a.claim) RETURNING 1
), released AS (
    UPDATE outbox o SET claim_token=NULL, claim_expires_at=NULL
    FROM unnest(%(l_rows)s::bigint[], %(l_claims)s::text[]) AS a(row_id, claim)
    WHERE o.row_id = a.row_id AND o.claim_token = a.claim RETURNING 1
)
SELECT (SELECT count(*) FROM delivered) + (SELECT count(*) FROM retried) + (SELECT count(*) FROM dead),
       CASE WHEN EXISTS (SELECT 1 FROM released) THEN pg_notify(%(channel)s, '') END
"""
_EXTEND = (
    "UPDATE outbox o SET claim_expires_at = now() + make_interval(secs => %(ttl)s) "
    "FROM unnest(%(rows)s::bigint[], %(claims)s::text[]) AS c(row_id, claim) WHERE o.row_id = c.row_id AND o.claim_token = c.claim"
)
_REPLAY = (
    "UPDATE outbox SET status='pending', attempts=0, created_at=%(now)s, next_attempt_at=%(now)s, last_error=NULL, finished_at=NULL, "
    "claim_token=NULL, claim_expires_at=NULL WHERE ((%(row)s::bigint IS NULL AND status='dead') OR row_id=%(row)s) "
    "AND (%(project)s::text IS NULL OR project = %(project)s)"
)


class PostgresOutbox:
    """Outbox on PostgreSQL, shared by replicas."""

    def __init__(self, database: PostgresDatabase, *, claim_ttl_s: float = CLAIM_TTL_S) -> None:
        self._database = database
        self._claim_ttl_s = claim_ttl_s

    async def claim_due(self, *, now: float, limit: int, sink: str | None = None, skip: Collection[int] = ()) -> builtins.list[Delivery]:
        """Claim up to ``limit`` pending deliveries due by ``now`` (for one sink, if given) that no live claim holds, oldest due first, none of ``skip``."""
        token = uuid.uuid4().hex
        params = {"now": now, "sink": sink, "limit": limit, "token": token, "ttl": self._claim_ttl_s, "skip": builtins.list(skip)}
        async with self._database.connection("claim rows in") as conn:
            rows = await (await conn.execute(_CLAIM, params)).fetchall()
        rows.sort(key=lambda row: (row[-1], row[0]))  # RETURNING keeps no order
        return [_delivery(row, claim=token) for row in rows]

    async def extend_claims(self, claims: Mapping[int, str]) -> None:
        """Push the expiry of these claims (row id -> token) a full claim TTL ahead; rows no longer held by that token are left alone."""
        if not claims:
            return
        params = {"ttl": self._claim_ttl_s, "rows": builtins.list(claims), "claims": builtins.list(claims.values())}
        async with self._database.connection("extend claims in") as conn:
            await conn.execute(_EXTEND, params)

    async def apply_results(self, results: AttemptResults, *, now: float) -> None:
        """Record a group of attempts in one statement; rows no longer held by their claim are left alone."""
        claims = results.claims
        released = [r for r in results.released if r in claims]
        params = {
            "now": now,
            "d_rows": builtins.list(results.delivered),
            "d_claims": [claims.get(r) for r in results.delivered],
            "r_rows": [r for r, _, _ in results.retries],
            "r_at": [at for _, at, _ in results.retries],
            "r_errors": [e for _, _, e in results.retries],
            "r_claims": [claims.get(r) for r, _, _ in results.retries],
            "x_rows": [r for r, _ in results.dead],
            "x_errors": [e for _, e in results.dead],
            "x_claims": [claims.get(r) for r, _ in results.dead],
            "l_rows": released,
            "l_claims": [claims[r] for r in released],
            "channel": NOTIFY_CHANNEL,
        }
        async with self._database.connection("write") as conn:
            await conn.execute(_SETTLE, params)

    async def dead_letter_unknown_sinks(self, known: Iterable[str]) -> int:
        """Dead-letter pending rows for sinks that are no longer configured; return how many."""
        return await self._dead_letter_unknown("sink", known)

    async def dead_letter_unknown_projects(self, known: Iterable[str]) -> int:
        """Dead-letter pending rows of projects that are no longer configured; return how many."""
        return await self._dead_letter_unknown("project", known)

    async def _dead_letter_unknown(self, column: str, known: Iterable[str]) -> int:
        sql = (
            "UPDATE outbox SET status='dead', next_attempt_at=NULL, claim_token=NULL, claim_expires_at=NULL, "  # noqa: S608 - our column names
            f"last_error='{column} ' || {column} || ' is no longer configured; add it back, then replay' "
            f"WHERE status='pending' AND NOT ({column} = ANY(%s))"
        )
        async with self._database.connection("write") as conn:
            return (await conn.execute(sql, (builtins.list(known),))).rowcount

    async def list(self, *, dead: bool, limit: int = 100, project: str | None = None) -> builtins.list[OutboxRow]:
        """Return dead-lettered rows, or pending ones (of one project, if given), newest first."""
        sql = (
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = %s AND (%s::text IS NULL OR project = %s) "  # noqa: S608 - constant columns
            "ORDER BY row_id DESC LIMIT %s"
        )
        async with self._database.connection() as conn:
            rows = await (await conn.execute(sql, ("dead" if dead else "pending", project, project, limit))).fetchall()
        return [OutboxRow(*row) for row in rows]

    async def replay(self, row_id: int | None, *, now: float, project: str | None = None) -> int:
        """Make one row (or, with None, every dead row; of one project, if given) pending again, due now; return how many (and wake the deliverers)."""
        async with self._database.transaction() as conn:
            count = (await conn.execute(_REPLAY, {"now": now, "row": row_id, "project": project})).rowcount
            if count:
                await _notify(conn)
        return count

    async def stats(self) -> OutboxStats:
        """Return pending and dead counts and the oldest pending row's age anchor."""
        sql = (
            "SELECT (SELECT count(*) FROM outbox WHERE status='pending'), (SELECT count(*) FROM outbox WHERE status='dead'), "
            "(SELECT min(created_at) FROM outbox WHERE status='pending')"
        )
        async with self._database.connection() as conn:
            row = await (await conn.execute(sql)).fetchone()
        pending, dead, oldest = row if row is not None else (0, 0, None)
        return OutboxStats(pending=pending, dead=dead, oldest_pending_created_at=oldest)

    async def prune(self, *, older_than: float) -> int:
        """Delete rows delivered before ``older_than``; return how many."""
        async with self._database.connection("write") as conn:
            return (await conn.execute("DELETE FROM outbox WHERE status='delivered' AND finished_at < %s", (older_than,))).rowcount


def _delivery(row: tuple[Any, ...], *, claim: str) -> Delivery:
    row_id, event_id, event_type, sink, action_id, body, attempts, created_at, project, _ = row
    return Delivery(row_id, event_id, event_type, sink, action_id, body, attempts, created_at, claim=claim, project=project)


async def _notify(conn: Connection) -> None:
    await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
