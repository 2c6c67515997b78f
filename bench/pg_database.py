"""A throwaway PostgreSQL database: created under a unique name, dropped (with its sessions) afterwards.

Shared by the tests' ``pg_database`` fixture (tests/conftest.py) and the PostgreSQL
benchmarks (bench/failover.py, bench/cycle_cost.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


@contextlib.contextmanager
def temp_database(server: str, *, prefix: str) -> Iterator[str]:
    """Create a database ``<prefix>_<random hex>`` on ``server``; yield its URL; drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_server_url() -> str:
    """Return the PostgreSQL server a benchmark creates its database on, or exit saying which variable to set."""
    url = os.environ.get("RELAY_BENCH_POSTGRES_URL") or os.environ.get("RELAY_TEST_POSTGRES_URL")
    if not url:
        sys.exit("set RELAY_BENCH_POSTGRES_URL (or RELAY_TEST_POSTGRES_URL) to a PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/test")
    return url


def backends(url: str) -> list[int]:
    """Return the pids of the PostgreSQL backends connected to the database of ``url`` (this query's own left out)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    return [row[0] for row in rows]
