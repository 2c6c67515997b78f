"""PostgresDatabase: a small psycopg connection pool, its session settings, migrations and error mapping.

Sessions are made safe for a shared database and for PgBouncer in transaction mode:
no prepared statements (``prepare_threshold=None``), only transaction-scoped advisory
locks, and timeouts so a frozen replica cannot hold a row lock for long
(``idle_in_transaction_session_timeout``, ``statement_timeout``). Every psycopg error,
including "read only" and "in recovery" answers after a failover, becomes a StoreError
naming the database by user, host, port and name, never by its password.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from daemon.errors import StoreError
from daemon.libpq import libpq_passwords
from daemon.store.postgres_schema import migrate, read_version
from daemon.urls import describe_postgres_url

APPLICATION_NAME = "voucherify-relay"
SESSION_SETTINGS = {"idle_in_transaction_session_timeout": "5s", "statement_timeout": "10s"}
CONNECT_TIMEOUT_S = 5
# A pooled connection handed back in good order less than this long ago is lent again without the pool's check
# (an empty query, one round trip): a busy dispatcher borrows one for every claim and every write. One that went bad
# meanwhile fails that one call (a StoreError, retried like any other) and is dropped by the pool.
CHECK_AFTER_IDLE_S = 1.0
POOL_WAIT_S = 5.0  # how long a caller waits for a pooled connection before its call fails (a poll or a batch, retried later)
Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class PostgresDatabase:
    """One pool of connections to the relay's PostgreSQL database."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 4) -> None:
        self.url = url
        self.display = describe_postgres_url(url)
        # libpq also takes the password from PGPASSWORD or the password file; hide those too
        self._passwords = libpq_passwords(url, os.environ)
        self._returned: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            kwargs=connection_options(url),
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=configure_session,
            check=self._check_if_idle,
            reset=self._note_returned,
            name="voucherify-relay",
            timeout=POOL_WAIT_S,
            reconnect_timeout=24 * 3600.0,  # keep reconnecting through a long outage; callers fail fast meanwhile
        )

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.display})"

    async def _note_returned(self, conn: Connection) -> None:
        """Remember when a connection came back to the pool in good order."""
        self._returned[conn] = time.monotonic()

    async def _check_if_idle(self, conn: Connection) -> None:
        """Check a connection before lending it, unless it came back in good order within ``CHECK_AFTER_IDLE_S``."""
        if time.monotonic() - self._returned.get(conn, float("-inf")) >= CHECK_AFTER_IDLE_S:
            await AsyncConnectionPool.check_connection(conn)

    async def open(self, *, migrate_schema: bool = True) -> int:
        """Connect once (so a wrong address or password fails here, clearly), migrate, then open the pool; return the schema version."""
        with self.errors("open"):
            async with await psycopg.AsyncConnection.connect(self.url, **connection_options(self.url)) as conn:
                await configure_session(conn)
                version = await migrate(conn, display=self.display) if migrate_schema else await read_version(conn, display=self.display)
            await self._pool.open(wait=False)
        return version

    async def schema_version(self) -> int:
        """Return the schema version the database is at (0: not created yet)."""
        async with self.connection("read") as conn:
            return await read_version(conn, display=self.display)

    @asynccontextmanager
    async def connection(self, doing: str = "read") -> AsyncIterator[Connection]:
        """Lend a pooled connection in autocommit mode (each statement its own transaction)."""
        with self.errors(doing):
            async with self._pool.connection() as conn:
                yield conn

    @asynccontextmanager
    async def transaction(self, doing: str = "write") -> AsyncIterator[Connection]:
        """Lend a pooled connection inside one transaction: committed if the block ends normally, else rolled back."""
        with self.errors(doing):
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn psycopg errors into StoreError naming the database and what was being done."""
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(f"state database {self.display}: cannot {doing} it: {self.scrub(_reason(exc))}") from None

    def scrub(self, text: str) -> str:
        """Remove the password (the URL's or PGPASSWORD's) from ``text``, should a server or driver message ever echo it."""
        for password in self._passwords:
            text = text.replace(password, "***")
        return text

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._pool.close()


def connection_options(url: str) -> dict[str, Any]:
    """Return the connection keywords every relay session uses (the URL's own options win)."""
    options: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
    given = url_options(url)
    if "application_name" not in given:
        options["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT_S
    return options


def url_options(url: str) -> dict[str, Any]:
    """Return the libpq options a URL sets (raises psycopg.ProgrammingError if it cannot be parsed)."""
    return psycopg.conninfo.conninfo_to_dict(url)


async def configure_session(conn: Connection) -> None:
    """Apply the relay's session timeouts to a new connection."""
    names = list(SESSION_SETTINGS)
    placeholders = ", ".join("set_config(%s, %s, false)" for _ in names)
    params = [value for name in names for value in (name, SESSION_SETTINGS[name])]
    await conn.execute(f"SELECT {placeholders}", params)


def _reason(exc: psycopg.Error) -> str:
    """Return the first line of a driver error: the server's or libpq's message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
