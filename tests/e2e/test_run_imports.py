"""``voucherify-relay run`` stays out of the demo's room: it never imports ``daemon.demo``."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from tests.conftest import relay_env, until
from tests.e2e.conftest import cli_env

# The real CLI entry point in a fresh interpreter; on exit it prints the daemon modules it loaded.
RUN_AND_LIST_MODULES = """
import atexit, sys
atexit.register(lambda: print("MODULES", " ".join(sorted(m for m in sys.modules if m.startswith("daemon"))), flush=True))
from daemon.cli import main
raise SystemExit(main(["run"]))
"""


async def test_run_never_imports_the_demo_package(tmp_path: Path, standin: VoucherifyStandIn, receiver: RecordingReceiver) -> None:
    """A relay started by the CLI's run command polls, delivers and stops without ever loading a daemon.demo module."""
    action_id = standin.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS", progress=10)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_AND_LIST_MODULES, env=cli_env(relay_env(tmp_path, standin, receiver)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await until(lambda: standin.count("list") >= 1)
        standin.complete_action(action_id, example="VOUCHERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) >= 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    modules = next(line.split()[1:] for line in out.decode().splitlines() if line.startswith("MODULES"))
    assert proc.returncode == 0, out.decode()[-2000:]
    assert {"daemon.cli", "daemon.lifecycle", "daemon.app", "daemon.outbox", "daemon.sinks.webhook"} <= set(modules)
    assert [m for m in modules if m.startswith("daemon.demo")] == []
