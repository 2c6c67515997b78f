"""Poll-cycle cost with 100, 10,000 and 100,000 actions in the state database.

Each size gets a fresh SQLite file, pre-filled in a child process with that many
finished actions and their delivered outbox rows (plus a few dead letters and a week
of API-call log). The stand-in runs in a process of its own with 1,000 actions, so the
relay's CPU time is measured without the server's. Then, per size alone in a child
process: start-up queries, the baseline poll, every SQL statement of one steady cycle
with SQLite's query plan (to show that none scans a table), peak Python memory
allocated per cycle (``tracemalloc``), resident memory, the two writes of a steady
cycle and the hourly prune. Finally one child holds every database open and runs one
steady cycle of each in turn (the real ``Poller``, then recording the cycle's request times as
``Relay`` does, plus the ``outbox_stats`` of the per-cycle log line), so a drift in
the machine's load hits all sizes alike: CPU time (``time.process_time``) and wall
time per cycle, the dispatcher's once-a-second ``claim_due``, and a bare list request.

    python -m bench.cycle_cost [--sizes 100,10000,100000] [--cycles 100]
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

if TYPE_CHECKING:
    from daemon.poller import Poller
    from daemon.store import Stores
    from daemon.voucherify import VoucherifyClient

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
    mean,
    percentile,
    quiet_logs,
    rss_kib,
    sample_events,
    wait_for_port,
)

STANDIN_ACTIONS = 1000
BATCH = 5000
RETENTION_S = 7 * 86400.0


# --- child: pre-fill --------------------------------------------------------------------------


MARK_DELIVERED = "UPDATE outbox SET status='delivered', attempts=1, finished_at=created_at + 1, last_error=NULL"
MARK_DEAD = "UPDATE outbox SET status='dead', next_attempt_at=NULL, last_error='HTTP 500' WHERE row_id <= %s"  # SQLite: ? for %s


async def seed(stores: Stores, count: int) -> int:
    """Write ``count`` finished actions with their outbox rows and a week of API-call log through the ports; return how many rows to mark dead."""
    from daemon.model import ActionSnapshot, format_timestamp  # noqa: PLC0415
    from daemon.store import CycleResult  # noqa: PLC0415

    rng = random.Random(count)
    now = time.time()
    for first in range(0, count, BATCH):
        events = sample_events(min(BATCH, count - first), prefix="aa_hist", start=first)
        snapshots = []
        for event in events:
            created = datetime.fromtimestamp(now - rng.uniform(3 * 86400.0, 10 * 86400.0), tz=UTC)
            stamp = format_timestamp(created)
            snapshots.append(ActionSnapshot(str(event.data["id"]), str(event.data["type"]), str(event.data["status"]), None, 100, stamp, stamp))
        seen_at = now - rng.uniform(0, RETENTION_S / 2)
        await stores.actions.commit_cycle(CycleResult(snapshots=snapshots, events=[(e, ["webhook"]) for e in events]), now=seen_at)
    await stores.calls.record(now - RETENTION_S * k / count for k in range(count))
    return min(100, max(1, count // 100))


async def close(stores: Stores) -> None:
    """Close a store bundle (``asyncio.run`` wants a coroutine)."""
    await stores.close()


def prefill(db: Path, count: int) -> dict[str, float]:
    """Fill ``db`` with ``count`` finished actions, their delivered outbox rows, dead letters and an API-call log."""
    from daemon.store.sqlite import open_sqlite  # noqa: PLC0415

    started = time.perf_counter()
    stores = open_sqlite(db)
    dead = asyncio.run(seed(stores, count))
    asyncio.run(close(stores))
    with sqlite3.connect(db) as raw:  # bulk "delivered", as delivered results would leave them
        raw.execute(MARK_DELIVERED)
        raw.execute(MARK_DEAD.replace("%s", "?"), (dead,))
    return {"prefill_s": time.perf_counter() - started, "db_mib": db.stat().st_size / 2**20}


# --- child: measure ---------------------------------------------------------------------------


async def measure_one(db: Path, url: str, *, mem_cycles: int) -> dict[str, Any]:
    """One size alone in a process: start-up, baseline, SQL plans, memory per cycle, the writes, prune."""
    from daemon.poller import Poller  # noqa: PLC0415
    from daemon.store.sqlite import open_sqlite  # noqa: PLC0415
    from daemon.voucherify import VoucherifyClient  # noqa: PLC0415

    out: dict[str, Any] = {}
    started = time.perf_counter()
    store = open_sqlite(db)
    await store.calls.since(time.time() - 3600)
    await store.outbox.dead_letter_unknown_sinks(["webhook"])
    out["startup_ms"] = (time.perf_counter() - started) * 1000
    async with aiohttp.ClientSession() as session:
        client = VoucherifyClient(session, base_url=url, app_id=APP_ID, app_token=APP_TOKEN)
        poller = Poller(client=client, store=store.actions, route=lambda _e: ["webhook"], stuck_after=timedelta(hours=1))
        for _ in range(6):  # the baseline and warm-up
            await poller.poll_once()
        out["sql"] = await _traced_cycle(poller, store, db)
        out |= await _memory_pass(poller, store, mem_cycles)
    out |= await _write_costs(store)
    started = time.perf_counter()
    cutoff = time.time() - RETENTION_S
    out["prune_rows"] = (await store.outbox.prune(older_than=cutoff), await store.actions.prune(older_than=cutoff))
    await store.calls.prune(older_than=cutoff)
    out["prune_ms"] = (time.perf_counter() - started) * 1000
    await store.close()
    return out


async def measure_interleaved(dbs: dict[int, Path], url: str, *, cycles: int) -> dict[int, dict[str, list[float]]]:
    """Every size open in one process, one steady cycle each in turn (order alternating), so drift hits all alike."""
    from daemon.poller import Poller  # noqa: PLC0415
    from daemon.store.sqlite import open_sqlite  # noqa: PLC0415
    from daemon.voucherify import VoucherifyClient  # noqa: PLC0415

    out: dict[int, dict[str, list[float]]] = {size: {} for size in dbs}
    async with aiohttp.ClientSession() as session:
        setups = []
        for size, db in dbs.items():
            store = open_sqlite(db)
            client = VoucherifyClient(session, base_url=url, app_id=APP_ID, app_token=APP_TOKEN)
            poller = Poller(client=client, store=store.actions, route=lambda _e: ["webhook"], stuck_after=timedelta(hours=1))
            for _ in range(5):
                await poller.poll_once()
            setups.append((size, poller, store, client))
        for n in range(cycles):
            for size, poller, store, client in setups if n % 2 == 0 else setups[::-1]:
                for key, value in (await time_cycle(poller, store, client)).items():
                    out[size].setdefault(key, []).append(value)
        for _, _, store, _ in setups:
            await store.close()
    return out


async def time_cycle(poller: Poller, store: Stores, client: VoucherifyClient) -> dict[str, float]:
    """Time one steady cycle and, separately, the pieces around it."""
    c0, w0 = time.process_time(), time.perf_counter()
    report = await poller.poll_once()
    await store.calls.record(client.take_sent())  # Relay records the cycle's request times for the budget
    await store.outbox.stats()  # Relay's per-cycle log line runs it
    c1, w1 = time.process_time(), time.perf_counter()
    stats = await store.outbox.stats()
    c2 = time.process_time()
    await store.outbox.claim_due(now=time.time(), limit=100, sink="webhook")
    c3 = time.process_time()
    await client.list_page(limit=100)  # the HTTP + JSON share of a cycle, alone
    c4 = time.process_time()
    return {
        "cycle_cpu_ms": (c1 - c0) * 1000,
        "cycle_wall_ms": (w1 - w0) * 1000,
        "stats_cpu_ms": (c2 - c1) * 1000,
        "claim_cpu_ms": (c3 - c2) * 1000,
        "list_only_cpu_ms": (c4 - c3) * 1000,
        "api_calls": report.api_calls + (report.transitions + stats.pending) * 1000,  # a change or a pending row would show here
    }


async def _write_costs(store: Stores, repeats: int = 50) -> dict[str, float]:
    """Time the two writes every steady cycle makes although nothing changed."""
    from daemon.store import CycleResult  # noqa: PLC0415

    newest = (await store.actions.load_cursor()).newest_created_at
    c0 = time.process_time()
    for _ in range(repeats):
        await store.actions.commit_cycle(CycleResult(snapshots=[], events=[], newest_created_at=newest), now=time.time())
    c1 = time.process_time()
    for _ in range(repeats):
        await store.calls.record([time.time()])
    c2 = time.process_time()
    return {"empty_commit_cpu_ms": (c1 - c0) * 1000 / repeats, "record_call_cpu_ms": (c2 - c1) * 1000 / repeats}


async def _traced_cycle(poller: Poller, store: Stores, db: Path) -> list[list[str]]:
    statements: list[str] = []
    connection = store.actions._db  # type: ignore[attr-defined]  # noqa: SLF001 - read-only tracing of what one cycle runs
    connection.set_trace_callback(statements.append)
    await poller.poll_once()
    await store.outbox.stats()
    await store.outbox.claim_due(now=time.time(), limit=100, sink="webhook")
    connection.set_trace_callback(None)
    plans = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
        for sql in statements:
            head = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
            if head not in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
                continue
            plan = "; ".join(row[3] for row in ro.execute("EXPLAIN QUERY PLAN " + sql)) or "(no table access)"
            plans.append([_shorten(sql), plan])
    return plans


def _shorten(sql: str, width: int = 110) -> str:
    one = " ".join(sql.split())
    if " IN (" in one:
        head, tail = one.split(" IN (", 1)
        one = head + " IN (" + str(tail.count(",") + 1) + " ids)" + tail.split(")", 1)[1] if ")" in tail else one
    return one if len(one) <= width else one[: width - 3] + "..."


async def _memory_pass(poller: Poller, store: Stores, cycles: int) -> dict[str, Any]:
    gc.collect()
    rss_before = rss_kib()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peaks = []
    for _ in range(cycles):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        await poller.poll_once()
        await store.outbox.stats()
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"peak_alloc_kib": [p / 1024 for p in peaks], "retained_kib": retained / 1024, "rss_kib_before_mem": rss_before, "rss_kib_end": rss_kib()}


# --- orchestrator -----------------------------------------------------------------------------


def run_child(args: list[str], *, timeout_s: float, module: str = "bench.cycle_cost") -> dict[str, Any]:
    """Run ``module`` (this one by default) in a child process; return the JSON it prints last."""
    done = subprocess.run(  # noqa: S603 - this interpreter and one of our modules
        [sys.executable, "-m", module, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        msg = f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_all(sizes: list[int], *, cycles: int, mem_cycles: int) -> Section:
    """Pre-fill every size; measure each alone (plans, memory); then all of them interleaved in one process (CPU)."""
    port = free_port()
    results: dict[int, dict[str, Any]] = {}
    standin_args = [sys.executable, "-m", "bench.standin_server", "--port", str(port), "--actions", str(STANDIN_ACTIONS)]
    url = f"http://127.0.0.1:{port}"
    with child_process(standin_args, cwd=ROOT, env=child_env()), tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
        wait_for_port(port)
        dbs = {size: Path(tmp) / f"state-{size}.db" for size in sizes}
        for size, db in dbs.items():
            print(f"cycle_cost: pre-filling {size:,} actions, then plans and memory ...", flush=True)
            results[size] = run_child(["--prefill", str(size), "--db", str(db)], timeout_s=900)
            results[size] |= run_child(["--measure-one", "--db", str(db), "--url", url, "--mem-cycles", str(mem_cycles)], timeout_s=600)
        print(f"cycle_cost: {cycles} steady cycles per size, interleaved ...", flush=True)
        interleaved = run_child(["--measure-cpu", "--dbs", ",".join(f"{k}={v}" for k, v in dbs.items()), "--url", url, "--cycles", str(cycles)], timeout_s=900)
        for size in sizes:
            results[size] |= interleaved[str(size)]
    return build_section(results, cycles=cycles, mem_cycles=mem_cycles)


def build_section(results: dict[int, dict[str, Any]], *, cycles: int, mem_cycles: int) -> Section:
    """Tabulate the figures per size."""
    header = [
        "actions in DB",
        "DB size MiB",
        "cycle CPU ms (median)",
        "p95",
        "of which list HTTP+JSON",
        "the rest (relay's own work)",
        "of which the 2 writes",
        "outbox_stats CPU ms",
        "claim_due CPU ms",
        "cycle wall ms (median)",
        "peak alloc/cycle KiB",
        "retained KiB",
        "RSS MiB",
        "API calls/cycle",
        "prune ms",
        "startup ms",
    ]
    rows = []
    for size, r in results.items():
        writes = r["empty_commit_cpu_ms"] + r["record_call_cpu_ms"]
        rows.append(
            [
                f"{size:,}",
                fmt(r["db_mib"], 1),
                fmt(median(r["cycle_cpu_ms"]), 2),
                fmt(percentile(r["cycle_cpu_ms"], 95), 2),
                fmt(median(r["list_only_cpu_ms"]), 2),
                fmt(median(r["cycle_cpu_ms"]) - median(r["list_only_cpu_ms"]), 2),
                fmt(writes, 2),
                fmt(median(r["stats_cpu_ms"]), 3),
                fmt(median(r["claim_cpu_ms"]), 3),
                fmt(median(r["cycle_wall_ms"]), 2),
                fmt(max(r["peak_alloc_kib"]), 0),
                fmt(r["retained_kib"], 1),
                fmt(r["rss_kib_end"] / 1024, 1),
                fmt(mean(r["api_calls"]), 2),
                fmt(r["prune_ms"], 2),
                fmt(r["startup_ms"], 1),
            ]
        )
    sizes = sorted(results)
    small, big = results[sizes[0]], results[sizes[-1]]
    ratio = median(big["cycle_cpu_ms"]) / median(small["cycle_cpu_ms"])
    mem_ratio = max(big["peak_alloc_kib"]) / max(small["peak_alloc_kib"])
    summary = [[f"steady cycle CPU at {s:,} actions (median)", f"{fmt(median(results[s]['cycle_cpu_ms']), 2)} ms", "", ""] for s in sizes] + [
        [f"cycle CPU ratio {sizes[-1]:,} / {sizes[0]:,}", f"{ratio:.2f}x", "about 1x", "meets" if ratio < 1.5 else "MISSES"],
        [f"peak alloc per cycle ratio {sizes[-1]:,} / {sizes[0]:,}", f"{mem_ratio:.2f}x", "about 1x", "meets" if mem_ratio < 1.5 else "MISSES"],
    ]
    text = (
        f"CPU: {cycles} steady cycles per size, measured in one process that holds every database open and runs one cycle of each "
        "in turn (the order alternating), after 5 warm-up cycles each, so drift in the machine's load hits every size alike. "
        f"Plans, memory ({mem_cycles} cycles), the writes, prune and start-up: each size alone in its own process, after its baseline. "
        "The stand-in runs in its own process "
        f"with {STANDIN_ACTIONS:,} actions created over 48 h, so a steady cycle is one list page of 100 that changes nothing. "
        '"Cycle CPU" is `Poller.poll_once` plus the `outbox_stats` query of the per-cycle log line (medians: the machine may be shared). '
        '"Of which list HTTP+JSON" is one bare `list_page(limit=100)` measured alone (the floor any cycle pays); "of which the 2 writes" '
        "is an empty `commit_cycle` (it still rewrites the cursor) plus one `record_api_calls` row, the two write transactions every "
        'cycle makes although nothing changed. "claim_due" is the dispatcher\'s once-a-second query (nothing due). "Peak alloc" is the '
        'most Python memory (tracemalloc) a cycle allocated above what it started with; "retained" is the growth over those cycles. '
        '"prune" is the hourly retention job with nothing old enough to delete; "startup" is opening the store plus its start-up queries.'
    )
    markdown = "\n\n".join(
        [
            text,
            markdown_table(header, rows),
            f"The SQL of one steady cycle at {sizes[-1]:,} actions, with SQLite's query plan (`SCAN` on a big table would be a full scan):",
            markdown_table(["statement", "query plan"], [[f"`{s}`", p] for s, p in big["sql"]]),
        ]
    )
    raw = {str(k): {kk: vv for kk, vv in v.items() if kk != "sql"} for k, v in results.items()}
    return Section(name="cycle_cost", title="Poll-cycle cost vs database size", summary=summary, markdown=markdown, raw=raw)


def main() -> None:
    """Orchestrate (default) or act as a child (``--prefill`` / ``--measure``)."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated action counts (env BENCH_CYCLE_SIZES; default 100,10000,100000)")
    parser.add_argument("--cycles", type=int, default=env_int("BENCH_CYCLES", 100), help="steady cycles timed per size (env BENCH_CYCLES)")
    parser.add_argument("--mem-cycles", type=int, default=env_int("BENCH_MEM_CYCLES", 20))
    parser.add_argument("--prefill", type=int, default=None, help=argparse_hidden())
    parser.add_argument("--measure-one", action="store_true", help=argparse_hidden())
    parser.add_argument("--measure-cpu", action="store_true", help=argparse_hidden())
    parser.add_argument("--dbs", default=None, help=argparse_hidden())
    parser.add_argument("--db", type=Path, default=None, help=argparse_hidden())
    parser.add_argument("--url", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.prefill is not None:
        print(json.dumps(prefill(args.db, args.prefill)))
        return
    if args.measure_one:
        quiet_logs()
        print(json.dumps(asyncio.run(measure_one(args.db, args.url, mem_cycles=args.mem_cycles))))
        return
    if args.measure_cpu:
        quiet_logs()
        dbs = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.dbs.split(","))}
        print(json.dumps(asyncio.run(measure_interleaved(dbs, args.url, cycles=args.cycles))))
        return
    import os  # noqa: PLC0415

    sizes = [int(s) for s in (args.sizes or os.environ.get("BENCH_CYCLE_SIZES", "100,10000,100000")).split(",")]
    section = measure_all(sizes, cycles=args.cycles, mem_cycles=args.mem_cycles)
    print(section.markdown)
    finish(section, args.json)


def argparse_hidden() -> str:
    """Return argparse's marker for options only the orchestrator passes."""
    import argparse  # noqa: PLC0415

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
