"""Several ``voucherify-relay run`` processes on one PostgreSQL database, watched through their JSON logs.

Used by tests/e2e/test_replicas.py and bench/failover.py. Each replica is a child process
with its own ``RELAY_REPLICA_ID`` (r1, r2, ...) and its own health port; its log lines are
parsed as they arrive, so a caller can ask who holds the lease, since when, and when a
replica lost it, by the log's UTC timestamps (comparable with the stand-in's request log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.common import LOCALHOST, child_env, free_port


@dataclass
class Replica:
    """One ``voucherify-relay run`` child: its log lines as text and as parsed records."""

    name: str
    env: dict[str, str]
    port: int
    lines: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _run_from: int = 0  # index in ``records`` where the current run's lines begin

    async def start(self) -> None:
        """Start the process (again, after a kill) with the same name and port."""
        self._run_from = len(self.records)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", env=child_env(self.env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    self.records.append(record)

    @property
    def alive(self) -> bool:
        """Tell whether the process runs (a stopped process counts as running)."""
        return self.proc is not None and self.proc.returncode is None

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float = 15) -> int:
        """Wait for the process to exit and its output to be read; return its status."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL, no clean-up at all (a stopped process is killed too)."""
        if self.alive:
            self.signal(signal.SIGKILL)
            await self.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        """Return this replica's log records named ``name``."""
        return [r for r in self.records if r.get("event") == name]

    def started(self) -> bool:
        """Tell whether the current run has logged ``relay.started`` (its signal handlers are in place)."""
        return any(r.get("event") == "relay.started" for r in self.records[self._run_from :])

    def leading(self) -> bool:
        """Tell whether the log's last leadership line says this replica holds the lease."""
        changes = [r["event"] for r in self.records[self._run_from :] if r.get("event") in ("lease.acquired", "lease.lost", "lease.released")]
        return self.alive and bool(changes) and changes[-1] == "lease.acquired"

    def leadership(self) -> list[tuple[datetime, datetime | None]]:
        """Return the (from, until) intervals this replica held the lease by its log; until is None while it holds it."""
        intervals: list[tuple[datetime, datetime | None]] = []
        for record in self.records:
            event, at = record.get("event"), datetime.fromisoformat(record["timestamp"]) if "timestamp" in record else None
            if event == "lease.acquired" and at is not None:
                intervals.append((at, None))
            elif event in ("lease.lost", "lease.released") and intervals and intervals[-1][1] is None and at is not None:
                intervals[-1] = (intervals[-1][0], at)
        return intervals

    def http_get(self, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
        """GET ``path`` from the replica's health server; return (status, body); (0, "") when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{LOCALHOST}:{self.port}{path}", timeout=timeout_s) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""


@dataclass
class ReplicaSet:
    """``count`` replicas r1..rN sharing one environment (the database, the stand-in, the receiver)."""

    env: dict[str, str]
    count: int = 3
    per_replica: list[dict[str, str]] = field(default_factory=list)  # extra settings for r1, r2, ... (an API URL through a proxy)
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Name the replicas and give each a health port."""
        for n in range(1, self.count + 1):
            port = free_port()
            env = {**self.env, "RELAY_REPLICA_ID": f"r{n}", "RELAY_HTTP_LISTEN": f"{LOCALHOST}:{port}"}
            env.update(self.per_replica[n - 1] if n <= len(self.per_replica) else {})
            self.replicas.append(Replica(name=f"r{n}", env=env, port=port))

    async def start(self) -> None:
        """Start every replica at the same moment."""
        await asyncio.gather(*(r.start() for r in self.replicas))

    async def stop(self) -> list[int]:
        """SIGTERM every running replica (SIGCONT first, in case one is stopped); SIGKILL what has not exited in 15 s."""
        codes = []
        await self._all_started(timeout_s=15)  # a SIGTERM before the handlers are in place would kill, not stop
        for replica in self.replicas:
            if not replica.alive:
                continue
            replica.signal(signal.SIGCONT)
            replica.signal(signal.SIGTERM)
        for replica in self.replicas:
            if replica.proc is None:
                continue
            try:
                codes.append(await replica.wait())
            except TimeoutError:
                await replica.kill()
                codes.append(-9)
        return codes

    async def _all_started(self, *, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every running replica has logged relay.started."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(r.started() for r in self.replicas if r.alive):  # noqa: ASYNC110 - the log is read by another task
            await asyncio.sleep(0.05)

    def leaders(self) -> list[Replica]:
        """Return the running replicas whose log says they hold the lease."""
        return [r for r in self.replicas if r.leading()]

    async def next_leader(self, *, other_than: Replica | None = None, timeout_s: float = 30) -> Replica:
        """Wait until exactly one replica (not ``other_than``) holds the lease by its log; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leaders = [r for r in self.leaders() if r is not other_than]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.02)
        msg = f"no single leader within {timeout_s}s: {[r.name for r in self.leaders()]}"
        raise TimeoutError(msg)

    async def baseline(self, *, timeout_s: float = 30) -> None:
        """Wait until a replica's log says it committed the baseline cycle: what finished before it is history, not events."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(r.get("event") == "poll.completed" and r.get("baseline") for replica in self.replicas for r in replica.records):
                return
            await asyncio.sleep(0.02)
        msg = f"no baseline cycle within {timeout_s}s"
        raise TimeoutError(msg)

    def output(self) -> str:
        """Return every replica's output, each line prefixed by its name."""
        return "".join(f"{r.name}| {line}" for r in self.replicas for line in r.lines)
