"""Several Voucherify projects for the benchmarks: one stand-in each, served from this process.

``StandInFarm`` runs one :class:`VoucherifyStandIn` per project (keys of its own, so a request
with another project's keys is a 401 there), all on this process's event loop, so the relay
(``python -m daemon run`` in a child, ``RelayChild``) is the only thing its CPU figures count.
Each stand-in counts its own requests and takes its own faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, WEBHOOK_SECRET, child_env
from bench.standin_server import preload
from daemon.demo.faults import FaultScript
from daemon.demo.receiver import Received, RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn


def project_name(n: int) -> str:
    """Return the n-th project's name (``p00``, ``p01``, ...)."""
    return f"p{n:02d}"


def project_keys(name: str) -> tuple[str, str]:
    """Return a project's (app id, app token): different for every project."""
    return f"app-{name}", f"tok_{name}_0123456789abcdef"


@dataclass
class StandInFarm:
    """One stand-in per project on this process's loop, preloaded with finished actions."""

    count: int
    actions: int = 200
    spread_hours: float = 48.0
    apis: dict[str, VoucherifyStandIn] = field(default_factory=dict)

    async def start(self) -> None:
        """Start every stand-in."""
        for n in range(self.count):
            name = project_name(n)
            app_id, token = project_keys(name)
            api = VoucherifyStandIn(app_id=app_id, app_token=token)
            preload(api, actions=self.actions, spread_hours=self.spread_hours, seed=n + 1)
            await api.start()
            self.apis[name] = api

    async def close(self) -> None:
        """Stop every stand-in."""
        for api in self.apis.values():
            await api.close()

    def env(self) -> dict[str, str]:
        """Return the ``RELAY_PROJECTS__<NAME>__*`` variables for every project."""
        env = {}
        for name, api in self.apis.items():
            app_id, token = project_keys(name)
            prefix = f"RELAY_PROJECTS__{name.upper()}__"
            env |= {f"{prefix}APP_ID": app_id, f"{prefix}APP_TOKEN": token, f"{prefix}API_URL": api.base_url}
        return env

    def counts(self) -> dict[str, dict[str, int]]:
        """Return each project's requests so far: lists, GETs, and the ones answered 401 (wrong keys)."""
        return {
            name: {"list": api.count("list"), "get": api.count("get"), "refused": sum(1 for r in api.requests if r.status == 401)}
            for name, api in self.apis.items()
        }

    @staticmethod
    def clear_faults(api: VoucherifyStandIn) -> None:
        """Drop the faults a stand-in has not played yet (a fault window ends)."""
        api.faults = FaultScript()


class FirstArrivals:
    """A webhook receiver that notes when each action's event first arrived (``time.time()``)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.receiver = RecordingReceiver(default_status=204, on_delivery=self._note)

    def _note(self, received: Received) -> None:
        data = received.envelope["data"]
        self.at.setdefault(f"{data['project']}/{data['id']}", received.at)

    async def start(self) -> str:
        """Listen; return the hook URL."""
        return await self.receiver.start()

    async def close(self) -> None:
        """Stop listening."""
        await self.receiver.close()


def relay_env(tmp: Path, hook_url: str, projects: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """Return a benchmark relay's environment: the projects, one webhook sink, a SQLite file in ``tmp``, JSON logs."""
    return {
        "RELAY_ENV_FILE": str(tmp / "absent.env"),
        "RELAY_STATE_URL": f"sqlite:///{tmp}/state.db",
        "RELAY_WEBHOOK_URL": hook_url,
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_HTTP_LISTEN": "off",
        **projects,
        **overrides,
    }


class RelayChild:
    """``python -m daemon run`` in a child process, its JSON log lines written to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start the child."""
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", env=child_env(self.env), cwd=ROOT, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the child (by its pid) and wait; SIGKILL it if it does not exit in time."""
        code = None
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
        return code

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        """Return the log lines written so far (only ``event`` ones if given)."""
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and (event is None or line.get("event") == event):
                    out.append(line)
        return out

    def cycles(self, field: str | None = None) -> dict[str, int]:
        """Return the completed poll cycles logged so far per project (or the sum of one of their fields, e.g. ``api_calls``)."""
        done: dict[str, int] = {}
        for line in self.lines("poll.completed"):
            project = str(line.get("project"))
            done[project] = done.get(project, 0) + (1 if field is None else int(line.get(field) or 0))
        return done

    def failed_cycles(self) -> dict[str, int]:
        """Return the cycles logged as failed, deferred or crashed, per project."""
        failed: dict[str, int] = {}
        for line in self.lines():
            if str(line.get("event", "")).startswith("poll.") and line.get("event") not in ("poll.completed", "poll.pace"):
                failed[str(line.get("project"))] = failed.get(str(line.get("project")), 0) + 1
        return failed

    async def until_every_project_polled(self, projects: list[str], *, times: int = 1, timeout_s: float = 60.0) -> None:
        """Wait until every project logged ``times`` completed cycles, or raise with the log's tail."""
        ok = await until(lambda: all(self.cycles().get(p, 0) >= times for p in projects), timeout_s=timeout_s, step_s=0.25)
        if not ok:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            msg = f"not every project completed {times} poll(s) in {timeout_s}s:\n{tail}"
            raise RuntimeError(msg)


async def until(predicate: Callable[[], bool], *, timeout_s: float, step_s: float = 0.02) -> bool:
    """Wait until ``predicate()`` holds; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True
