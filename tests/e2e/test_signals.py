"""Signals reaching the real daemon: SIGHUP is ignored, a second SIGTERM cuts the grace period short."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess


async def test_sighup_is_ignored_and_a_second_sigterm_exits_at_once(standin, receiver, tmp_path):
    """SIGHUP leaves the relay running; during a shutdown held up by a slow receiver a second SIGTERM ends it at once."""
    receiver.script.extend([("sleep", 8)] * 3)  # a receiver that hangs: the first SIGTERM's grace would wait for it
    action_id = standin.add_action()
    relay = RelayProcess(relay_env(tmp_path, standin, receiver))
    await relay.start()
    await until(lambda: any("poll.completed" in line for line in relay.output), timeout_s=20)
    relay.proc.send_signal(signal.SIGHUP)
    await until(lambda: any("signal.ignored" in line for line in relay.output), timeout_s=5)
    assert relay.proc.returncode is None
    standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
    await until(lambda: any('"events": 1' in line for line in relay.output), timeout_s=10)
    await asyncio.sleep(0.3)  # the send is now hanging on the receiver
    relay.proc.send_signal(signal.SIGTERM)
    await until(lambda: any("relay.stopping" in line for line in relay.output), timeout_s=5)
    started = time.monotonic()
    status = await relay.terminate(timeout_s=10)
    assert status == -signal.SIGTERM
    assert time.monotonic() - started < 5, "the second SIGTERM did not wait out the 20 s grace"
    assert any("relay.forced_exit" in line for line in relay.output)
