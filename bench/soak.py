"""Crash soak: SIGKILL the real ``voucherify-relay run`` again and again while hundreds of actions complete.

The daemon runs as a child process against an in-process Voucherify stand-in and two
webhook receivers (named sinks ``a`` and ``b``) that answer slowly, with 503s and
connection resets now and then; the stand-in also throws an API fault before some
restarts. Each run of the daemon is killed with SIGKILL at a random moment, right after
it reports a send (so other sends are in flight), or just after a poll completed (so
the next cycle's transaction is under way). After the last kill a final run drains
everything. Then, per sink: every expected event arrived at least once, nothing else
arrived, every copy of an event carries the same id and bytes, every signature
verifies, and no output line holds a secret.

    SOAK_ACTIONS=400 SOAK_KILLS=40 python -m bench.soak [--json out.json]
    pytest -m soak tests/e2e/test_soak.py           # the same, as a test

Knobs (environment): SOAK_ACTIONS (400), SOAK_KILLS (40), SOAK_SEED (20261123),
SOAK_UP_MIN_S (0.4) and SOAK_UP_MAX_S (2.0): how long a run lives before its kill;
SOAK_DRAIN_S (300): how long the final run may take to deliver everything;
SOAK_WORKDIR: keep the state database there (else a temporary directory). Exit status 1
when any check fails; every run's output and the undelivered actions are then written
beside the state database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Section, base_parser, child_env, env_float, env_int, finish, markdown_table
from daemon.demo.receiver import RecordingReceiver, verify_signature
from daemon.demo.standin import VoucherifyStandIn
from daemon.model import event_id_for

APP_ID = "soak-app"
APP_TOKEN = "tok_soak_s3cr3t_0123456789abcdef"  # noqa: S105 - a stand-in credential, long enough for the daemon's redactor, and scanned for
SECRETS = {"a": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "b": "whsec_c29hay1zZWNyZXQtYi0wMTIzNDU2Nzg5YWJjZA=="}
SINKS = tuple(SECRETS)
API_FAULTS = (  # (kind, path, params); 429 answers Retry-After: 1
    ("503", "list", {}), ("reset", "list", {}), ("500", "get", {}), ("malformed", "get", {}), ("truncated", "list", {}), ("429", "any", {"retry_after": 1}),
)  # fmt: skip
KILL_MODES = ("random", "mid-send", "after-poll")


@dataclass
class SinkCheck:
    """What one receiver got."""

    deliveries: int = 0
    distinct: int = 0
    duplicates: int = 0
    max_copies: int = 0
    missing: int = 0
    false_events: int = 0
    differing_bodies: int = 0
    bad_signatures: int = 0


@dataclass
class SoakResult:
    """Figures of one soak run."""

    actions: int
    kills: int = 0
    kill_modes: Counter[str] = field(default_factory=Counter)
    api_faults: int = 0
    expected_events: int = 0
    sinks: dict[str, SinkCheck] = field(default_factory=dict)
    secret_leaks: int = 0
    rate_limited: int = 0  # 429s answered
    early_same_run: int = 0  # requests before Retry-After passed, from the run that got the 429
    early_after_restart: int = 0  # the same, from a later run (a restarted process forgets Retry-After)
    final_exit: int | None = None
    duration_s: float = 0.0

    @property
    def events_checked(self) -> int:
        """Return expected events times sinks: each one was checked on each receiver."""
        return self.expected_events * len(self.sinks)

    @property
    def duplicates(self) -> int:
        """Return the extra copies received, over all sinks."""
        return sum(s.duplicates for s in self.sinks.values())

    def problems(self) -> list[str]:
        """Return every broken guarantee, empty when the soak passed."""
        kinds = ("missing", "false_events", "differing_bodies", "bad_signatures")
        found = [f"{name}: {getattr(check, k)} {k}" for name, check in self.sinks.items() for k in kinds if getattr(check, k)]
        found += [f"{self.secret_leaks} output line(s) hold a secret"] if self.secret_leaks else []
        found += [f"{self.early_same_run} request(s) before a Retry-After had passed"] if self.early_same_run else []
        return found + ([f"final run exited {self.final_exit}"] if self.final_exit != 0 else [])


class DaemonRun:
    """One ``voucherify-relay run`` child; its output lines are collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self.started_at = self.ended_at = datetime.now(UTC)

    async def start(self) -> None:
        """Start the child."""
        self.started_at = datetime.now(UTC)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", env=child_env(self.env), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    async def next_line(self, *needles: str, timeout_s: float) -> bool:
        """Wait for a new line holding one of ``needles``; False after ``timeout_s``."""
        seen, deadline = len(self.lines), time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.returncode is None:
            if any(n in line for line in self.lines[seen:] for n in needles):
                return True
            await asyncio.sleep(0.002)
        return False

    async def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.ended_at = datetime.now(UTC)
        await self._reader

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        self.ended_at = datetime.now(UTC)
        await self._reader
        return code


def daemon_env(state: Path, api_url: str, receivers: dict[str, RecordingReceiver]) -> dict[str, str]:
    """Return the daemon's environment: two named webhook sinks, fast polls and retries, JSON logs."""
    env = {
        "RELAY_ENV_FILE": str(state.parent / "absent.env"),
        "RELAY_VOUCHERIFY_API_URL": api_url,
        "RELAY_VOUCHERIFY_APP_ID": APP_ID,
        "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "RELAY_POLL_INTERVAL": "0.1",
        "RELAY_IDLE_POLL_INTERVAL": "0.2",
        "RELAY_STATE_URL": f"sqlite:///{state}",
        "RELAY_DELIVERY_RETRY_MAX_DELAY": "0.3",
        "RELAY_API_TIMEOUT_S": "2",
        "RELAY_LOG_FORMAT": "json",
    }
    for name, receiver in receivers.items():
        prefix = f"RELAY_SINKS__{name.upper()}__"
        env |= {prefix + "KIND": "webhook", prefix + "URL": receiver.url, prefix + "SECRET": SECRETS[name], prefix + "TIMEOUT_S": "1"}
    return env


def flaky_script(rng: random.Random, length: int) -> deque[Any]:
    """Return receiver answers: mostly slow 200s (so kills land mid-send), some 503s and resets."""
    choices: list[Any] = []
    for _ in range(length):
        roll = rng.random()
        choices.append(("sleep", rng.uniform(0.01, 0.08)) if roll < 0.7 else 503 if roll < 0.85 else "reset" if roll < 0.9 else 200)
    return deque(choices)


async def feed(standin: VoucherifyStandIn, ids: list[str], *, spread_s: float, rng: random.Random, expected: dict[str, str]) -> None:
    """Finish the actions evenly over ``spread_s``, a third failing; every tenth step also creates and finishes a new one."""
    pause = spread_s / max(len(ids), 1)
    for n, action_id in enumerate(ids):
        finish_action(standin, action_id, failed=rng.random() < 1 / 3, expected=expected)
        if n % 10 == 9:
            finish_action(standin, standin.add_action("VOUCHERS.BULK_UPDATE"), failed=False, expected=expected)
        await asyncio.sleep(pause)


def finish_action(standin: VoucherifyStandIn, action_id: str, *, failed: bool, expected: dict[str, str]) -> None:
    """Complete one action and note the event it must produce."""
    if failed:
        standin.complete_action(action_id, status="FAILED", result={"message": "the file has no header row"})
    else:
        standin.complete_action(action_id, result={"message": "imported", "done_count": 7, "failed_count": 0})
    expected[action_id] = event_id_for(action_id, "async_action.failed" if failed else "async_action.completed")


async def kill_once(env: dict[str, str], *, mode: str, rng: random.Random, up_min_s: float, up_max_s: float, outputs: list[DaemonRun]) -> None:
    """Start the daemon and SIGKILL it at a moment chosen by ``mode``."""
    run = DaemonRun(env)
    outputs.append(run)
    await run.start()
    await asyncio.sleep(rng.uniform(0, up_min_s))
    if mode == "mid-send":
        await run.next_line("delivery.sent", "delivery.retry_scheduled", timeout_s=up_max_s)
    elif mode == "after-poll":
        await run.next_line("poll.completed", timeout_s=up_max_s)
        await asyncio.sleep(rng.uniform(0, 0.1))  # the next cycle (0.1 s apart) is listing, fetching or committing
    else:
        await asyncio.sleep(rng.uniform(0, up_max_s - up_min_s))
    await run.kill()


async def drained(receivers: Iterable[RecordingReceiver], wanted: set[str], *, timeout_s: float) -> None:
    """Return once every receiver has every wanted event, or after ``timeout_s`` (the checks then report what is missing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(wanted <= r.delivered_ids() for r in receivers):  # noqa: ASYNC110 - receivers signal no event per arrival
        await asyncio.sleep(0.1)


def check_retry_after(standin: VoucherifyStandIn, runs: list[DaemonRun], result: SoakResult) -> None:
    """Count requests the stand-in saw before a 429's Retry-After (1 s here) had passed, by whether the same run sent them."""

    def run_at(moment: datetime) -> int:
        return next((n for n, run in enumerate(runs) if run.started_at <= moment <= run.ended_at), -1)

    limited = [r for r in standin.requests if r.status == 429]
    result.rate_limited = len(limited)
    for answered in limited:
        retry_after_s = 1.0
        for request in standin.requests:
            if 0 < (request.at - answered.at).total_seconds() < retry_after_s - 0.01:
                same = run_at(request.at) == run_at(answered.at)
                result.early_same_run += same
                result.early_after_restart += not same


def check_sink(receiver: RecordingReceiver, *, secret: str, expected: set[str]) -> SinkCheck:
    """Compare what one receiver accepted with the expected event ids."""
    delivered = receiver.delivered
    copies = Counter(r.event_id for r in delivered)
    bodies: dict[str, set[bytes]] = {}
    for received in delivered:
        bodies.setdefault(received.event_id, set()).add(received.body)
    return SinkCheck(
        deliveries=len(delivered),
        distinct=len(copies),
        duplicates=len(delivered) - len(copies),
        max_copies=max(copies.values(), default=0),
        missing=len(expected - set(copies)),
        false_events=len(set(copies) - expected),
        differing_bodies=sum(1 for b in bodies.values() if len(b) > 1),
        bad_signatures=sum(1 for r in delivered if not verify_signature(secret=secret, headers=r.headers, body=r.body)),
    )


async def run_soak(*, actions: int, kills: int, seed: int, up_min_s: float = 0.4, up_max_s: float = 2.0, drain_s: float = 300.0, workdir: Path) -> SoakResult:
    """Run the soak and return its figures (see the module docstring)."""
    rng, started = random.Random(seed), time.monotonic()
    result = SoakResult(actions=actions)
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    receivers = {name: RecordingReceiver() for name in SINKS}
    outputs: list[DaemonRun] = []
    await standin.start()
    for receiver in receivers.values():
        await receiver.start()
        receiver.script = flaky_script(rng, 4 * actions)
    try:
        env = daemon_env(workdir / "state.db", standin.base_url, receivers)
        ids = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(actions)]
        await kill_once(env, mode="after-poll", rng=rng, up_min_s=0.0, up_max_s=30.0, outputs=outputs)  # the baseline, then a kill
        result.kills, expected = 1, {}
        result.kill_modes["after-poll"] += 1
        feeder = asyncio.create_task(feed(standin, ids, spread_s=kills * (up_min_s + up_max_s) / 2 * 1.2, rng=rng, expected=expected))
        for n in range(kills - 1):
            if rng.random() < 0.3:
                kind, path, params = rng.choice(API_FAULTS)
                standin.inject(kind, path=path, times=rng.randint(1, 3), **params)
                result.api_faults += 1
            mode = KILL_MODES[n % len(KILL_MODES)]
            await kill_once(env, mode=mode, rng=rng, up_min_s=up_min_s, up_max_s=up_max_s, outputs=outputs)
            result.kills += 1
            result.kill_modes[mode] += 1
        await feeder
        final = DaemonRun(env)
        outputs.append(final)
        await final.start()
        wanted = set(expected.values())
        await drained(receivers.values(), wanted, timeout_s=drain_s)
        await asyncio.sleep(0.5)  # a few more cycles: anything false would show up now
        result.final_exit = await final.terminate()
        result.expected_events = len(wanted)
        result.sinks = {name: check_sink(r, secret=SECRETS[name], expected=wanted) for name, r in receivers.items()}
        secrets = [APP_TOKEN, *SECRETS.values(), *(s.removeprefix("whsec_") for s in SECRETS.values())]
        check_retry_after(standin, outputs, result)
        result.secret_leaks = sum(1 for run in outputs for line in run.lines if any(s in line for s in secrets))
        if result.problems():
            keep_evidence(workdir, outputs, expected, receivers)
    finally:
        for run in outputs:
            if run.proc.returncode is None:
                await run.kill()
        for receiver in receivers.values():
            await receiver.close()
        await standin.close()
    result.duration_s = time.monotonic() - started
    return result


def keep_evidence(workdir: Path, runs: list[DaemonRun], expected: dict[str, str], receivers: dict[str, RecordingReceiver]) -> None:
    """Write every run's output and the undelivered actions beside the state database, for a post-mortem."""
    with (workdir / "runs.log").open("w") as log:
        for n, run in enumerate(runs):
            log.write(f"=== run {n} {run.started_at.isoformat()} .. {run.ended_at.isoformat()} exit {run.proc.returncode}\n")
            log.writelines(run.lines)
    delivered = set.intersection(*(r.delivered_ids() for r in receivers.values()))
    missing = [f"{action_id} {event_id}\n" for action_id, event_id in expected.items() if event_id not in delivered]
    (workdir / "missing.txt").write_text("".join(missing))
    print(f"soak: evidence kept in {workdir} (runs.log, missing.txt, state.db)", file=sys.stderr)


def verdict(passed: bool) -> str:  # noqa: FBT001 - a table cell from a condition
    """Return the verdict cell."""
    return "ok" if passed else "FAIL"


def section(result: SoakResult) -> Section:
    """Summarize a soak for the benchmark report."""
    sinks = result.sinks.values()
    modes = ", ".join(f"{m} {c}" for m, c in sorted(result.kill_modes.items()))
    max_copies = max((s.max_copies for s in sinks), default=0)
    differing = any(s.differing_bodies for s in sinks)
    early = f"{result.rate_limited} / {result.early_same_run} same run, {result.early_after_restart} after a restart"
    rows = [
        ["kills survived (SIGKILL)", f"{result.kills} ({modes})", ">= SOAK_KILLS", verdict(not result.problems())],
        ["actions / expected events", f"{result.actions} / {result.expected_events}", "", ""],
        ["events checked (events x sinks)", str(result.events_checked), "all delivered", verdict(not any(s.missing for s in sinks))],
        ["false events", str(sum(s.false_events for s in sinks)), "0", verdict(not any(s.false_events for s in sinks))],
        ["duplicates (extra copies, all sinks)", f"{result.duplicates} (max {max_copies} copies of one event)", "same id and bytes", verdict(not differing)],
        ["API faults injected", str(result.api_faults), "", ""],
        ["429s answered / requests before Retry-After", early, "0 same run", verdict(not result.early_same_run)],
        ["secret occurrences in output", str(result.secret_leaks), "0", verdict(not result.secret_leaks)],
        ["duration", f"{result.duration_s:.0f} s", "", ""],
    ]
    per_sink = markdown_table(["sink", "deliveries", "distinct", "duplicates", "missing", "false", "bad signatures"], [
        [name, s.deliveries, s.distinct, s.duplicates, s.missing, s.false_events, s.bad_signatures] for name, s in result.sinks.items()
    ])  # fmt: skip
    return Section(name="soak", title="Crash soak (SIGKILL)", summary=rows, markdown=per_sink, raw={"problems": result.problems()})


def soak_workdir() -> contextlib.AbstractContextManager[str]:
    """Return SOAK_WORKDIR (created, kept afterwards) or a temporary directory."""
    kept = os.environ.get("SOAK_WORKDIR")
    if not kept:
        return tempfile.TemporaryDirectory(prefix="relay-soak-")
    Path(kept).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(kept)


async def soak_from_env() -> SoakResult:
    """Run the soak with the SOAK_* knobs, in SOAK_WORKDIR (kept) or a temporary directory."""
    with soak_workdir() as tmp:
        return await run_soak(
            actions=env_int("SOAK_ACTIONS", 400),
            kills=env_int("SOAK_KILLS", 40),
            seed=env_int("SOAK_SEED", 20261123),
            up_min_s=env_float("SOAK_UP_MIN_S", 0.4),
            up_max_s=env_float("SOAK_UP_MAX_S", 2.0),
            drain_s=env_float("SOAK_DRAIN_S", 300.0),
            workdir=Path(tmp),
        )


def main() -> int:
    """Run the soak, print its figures, and return 1 if a guarantee broke."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    result = asyncio.run(soak_from_env())
    report = section(result)
    finish(report, args.json)
    print(report.markdown)
    for problem in result.problems():
        print("FAIL:", problem)
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
