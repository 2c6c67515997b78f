"""Poll-cycle cost on PostgreSQL vs SQLite at 100 and 100,000 stored actions, as ratios in the same run.

Per size, a fresh SQLite file and a fresh, uniquely named PostgreSQL database (created on
RELAY_BENCH_POSTGRES_URL or RELAY_TEST_POSTGRES_URL, dropped afterwards) are seeded alike
through the store ports (``commit_cycle`` in chunks of 5,000: finished actions, their
outbox rows marked delivered, a few dead letters, a week of API-call log). The stand-in runs
in its own process with 1,000 actions (bench/standin_server.py). Then one child process
holds both stores open, each with its own ``Poller`` (PostgreSQL's commits under a fence on a
held lease, as a leader's are), and after 5 warm-up cycles each runs, in turn and in
alternating order so drift hits both alike:

- steady cycles: one list page of 100 that changes nothing;
- churn cycles: before each round the stand-in finishes the 3 actions it started the round
  before and starts 3 new ones, so every cycle fetches 3 details, writes 3 events to the
  outbox and 6 snapshots.

A cycle is ``time_cycle`` of bench/cycle_cost.py: ``poll_once``, recording the request
times, and the per-cycle ``outbox_stats``. CPU is ``time.process_time`` of the relay's
process (the database server's CPU is not in it); wall is ``perf_counter``.

    RELAY_BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python -m bench.cycle_cost_pg
        [--sizes 100,100000] [--cycles 200] [--churn-cycles 60]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psycopg

from bench.common import (
    APP_ID,
    APP_TOKEN,
    ROOT,
    Section,
    base_parser,
    child_env,
    child_process,
    env_int,
    finish,
    fmt,
    free_port,
    markdown_table,
    quiet_logs,
    wait_for_port,
)
from bench.cycle_cost import MARK_DEAD, MARK_DELIVERED, STANDIN_ACTIONS, prefill, run_child, seed, time_cycle
from bench.pg_database import bench_server_url, temp_database
from daemon.lease import POLL_LEASE
from daemon.poller import Poller
from daemon.store import Fence, Stores
from daemon.store.postgres import open_postgres
from daemon.store.postgres_lease import PostgresLeaseStore
from daemon.store.sqlite import open_sqlite
from daemon.voucherify import VoucherifyClient

CHURN = 3
WARM_UP = 5
KEYS = ("cycle_cpu_ms", "cycle_wall_ms")


# --- seeding ----------------------------------------------------------------------------------


async def seed_postgres(url: str, count: int) -> None:
    """Seed the PostgreSQL database as ``prefill`` seeds a SQLite file."""
    stores = await open_postgres(url)
    try:
        dead = await seed(stores, count)
    finally:
        await stores.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(MARK_DELIVERED)
        await conn.execute(MARK_DEAD, (dead,))
        await conn.execute("VACUUM ANALYZE")  # what autovacuum would have done to a table this old


# --- child: measure ---------------------------------------------------------------------------


async def measure(sqlite_db: Path, pg_url: str, url: str, control: str, *, cycles: int, churn_cycles: int) -> dict[str, Any]:
    """Both stores in one process: steady cycles, then churn cycles, one of each store in turn."""
    async with aiohttp.ClientSession() as session:
        sides = {"sqlite": (open_sqlite(sqlite_db), None), "postgres": (await open_postgres(pg_url), await hold_lease(pg_url))}
        setups = [(name, *_poller(session, url, stores, fence), stores) for name, (stores, fence) in sides.items()]
        for _ in range(WARM_UP):
            for _name, poller, client, stores in setups:
                await time_cycle(poller, stores, client)
        out: dict[str, Any] = {name: {} for name in sides}
        for phase, rounds in (("steady", cycles), ("churn", churn_cycles)):
            for n in range(rounds):
                if phase == "churn":
                    async with session.post(f"{control}/churn", params={"finish": str(CHURN)}) as answer:
                        answer.raise_for_status()
                for name, poller, client, stores in setups if n % 2 == 0 else setups[::-1]:
                    timed = await time_cycle(poller, stores, client)
                    for key in KEYS:
                        out[name].setdefault(f"{phase}_{key}", []).append(timed[key])
        for *_, stores in setups:
            await stores.close()
    out["stored"] = {"sqlite": count_sqlite(sqlite_db), "postgres": await count_postgres(pg_url)}
    return out


def _poller(session: aiohttp.ClientSession, url: str, stores: Stores, fence: Fence | None) -> tuple[Poller, VoucherifyClient]:
    client = VoucherifyClient(session, base_url=url, app_id=APP_ID, app_token=APP_TOKEN)
    poller = Poller(client=client, store=stores.actions, route=lambda _e: ["webhook"], stuck_after=timedelta(hours=1), fence=lambda: fence)
    return poller, client


async def hold_lease(pg_url: str) -> Fence:
    """Take the polling lease for an hour, so PostgreSQL's commits check a fence as a leader's do."""
    leases = PostgresLeaseStore(pg_url)
    lease = await leases.acquire_or_renew(name=POLL_LEASE, holder="bench", ttl_s=3600)
    await leases.close()
    if lease is None:
        msg = "the fresh database's lease is held by someone else"
        raise RuntimeError(msg)
    return Fence(name=lease.name, holder=lease.holder, term=lease.term)


def count_sqlite(db: Path) -> int:
    """Return how many actions the SQLite file holds."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM actions").fetchone()[0])


async def count_postgres(url: str) -> int:
    """Return how many actions the PostgreSQL database holds."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM actions")).fetchone()
    return int(row[0]) if row else 0


# --- orchestrator -----------------------------------------------------------------------------


def measure_all(server: str, sizes: list[int], *, cycles: int, churn_cycles: int) -> Section:
    """Seed both stores per size, then measure them in one child process per size."""
    port, control_port = free_port(), free_port()
    standin = [sys.executable, "-m", "bench.standin_server", "--port", str(port), "--actions", str(STANDIN_ACTIONS), "--control-port", str(control_port)]
    results: dict[int, dict[str, Any]] = {}
    with child_process(standin, cwd=ROOT, env=child_env()), tempfile.TemporaryDirectory(prefix="bench-cycle-pg-") as tmp:
        wait_for_port(port)
        wait_for_port(control_port)
        for size in sizes:
            with temp_database(server, prefix="relay_bench") as pg_url:
                db = Path(tmp) / f"state-{size}.db"
                print(f"cycle_cost_pg: seeding {size:,} actions into SQLite and PostgreSQL ...", flush=True)
                prefill(db, size)
                asyncio.run(seed_postgres(pg_url, size))
                print(f"cycle_cost_pg: {cycles} steady and {churn_cycles} churn cycles per store ...", flush=True)
                args = ["--measure", "--db", str(db), "--pg", pg_url, "--url", f"http://127.0.0.1:{port}", "--control", f"http://127.0.0.1:{control_port}"]
                args += ["--cycles", str(cycles), "--churn-cycles", str(churn_cycles)]
                results[size] = run_child(args, timeout_s=1800, module="bench.cycle_cost_pg")
    return build_section(results, cycles=cycles, churn_cycles=churn_cycles)


def build_section(results: dict[int, dict[str, Any]], *, cycles: int, churn_cycles: int) -> Section:
    """Tabulate medians per store and the PostgreSQL/SQLite ratios."""
    header = [
        "seeded actions",
        "stored (SQLite / PG)",
        "cycle",
        "SQLite CPU ms",
        "PG CPU ms",
        "PG/SQLite CPU",
        "SQLite wall ms",
        "PG wall ms",
        "PG/SQLite wall",
    ]
    rows, summary = [], []
    for size, r in results.items():
        for phase in ("steady", "churn"):
            cpu = [median(r[s][f"{phase}_cycle_cpu_ms"]) for s in ("sqlite", "postgres")]
            wall = [median(r[s][f"{phase}_cycle_wall_ms"]) for s in ("sqlite", "postgres")]
            stored = f"{r['stored']['sqlite']:,} / {r['stored']['postgres']:,}"
            rows.append(
                [f"{size:,}", stored, phase, fmt(cpu[0]), fmt(cpu[1]), f"{cpu[1] / cpu[0]:.2f}x", fmt(wall[0]), fmt(wall[1]), f"{wall[1] / wall[0]:.2f}x"]
            )
            ratio = wall[1] / wall[0]
            summary.append([f"PG/SQLite wall, {phase} cycle, {size:,} actions", f"{ratio:.2f}x", "<= 3x", "meets" if ratio <= 3 else "MISSES"])
    text = (
        f"Medians over {cycles} steady and {churn_cycles} churn cycles per store and size (a churn cycle: {CHURN} actions finish, "
        f"{CHURN} start). CPU is the relay process's own (`time.process_time`); PostgreSQL's server work shows only in wall time."
    )
    markdown = "\n\n".join([text, markdown_table(header, rows)])
    return Section(
        name="cycle_cost_pg", title="Poll-cycle cost: PostgreSQL vs SQLite", summary=summary, markdown=markdown, raw={str(k): v for k, v in results.items()}
    )


def main() -> None:
    """Orchestrate (default) or measure as a child (``--measure``)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,100000", help="comma-separated seeded action counts (100,100000)")
    parser.add_argument("--cycles", type=int, default=env_int("BENCH_CYCLES", 200), help="steady cycles per store and size (env BENCH_CYCLES)")
    parser.add_argument("--churn-cycles", type=int, default=60, help="cycles in which a few actions finish, per store and size")
    parser.add_argument("--measure", action="store_true", help="(child) measure one size")
    parser.add_argument("--db", type=Path, default=None, help="(child) the SQLite file")
    parser.add_argument("--pg", default=None, help="(child) the PostgreSQL database URL")
    parser.add_argument("--url", default=None, help="(child) the stand-in")
    parser.add_argument("--control", default=None, help="(child) the stand-in's control app")
    args = parser.parse_args()
    if args.measure:
        quiet_logs()
        figures = asyncio.run(measure(args.db, args.pg, args.url, args.control, cycles=args.cycles, churn_cycles=args.churn_cycles))
        print(json.dumps(figures))
        return
    section = measure_all(bench_server_url(), [int(s) for s in args.sizes.split(",")], cycles=args.cycles, churn_cycles=args.churn_cycles)
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
