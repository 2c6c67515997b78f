"""SIGKILL the real daemon mid-stream, again and again: nothing is lost, duplicates share ids."""

from __future__ import annotations

import asyncio
import random

from daemon.model import event_id_for
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess

ACTIONS = 80
KILLS = 6


async def complete_slowly(standin, ids: list[str]) -> None:
    """Finish one action every 60 ms, a third of them failing."""
    for n, action_id in enumerate(ids):
        if n % 3 == 0:
            standin.complete_action(action_id, status="FAILED", result={"message": "bad file"})
        else:
            standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await asyncio.sleep(0.06)


async def test_sigkill_loses_nothing(standin, receiver, tmp_path):
    """Killed six times while actions complete and sends are in flight, the relay still delivers every event."""
    rng = random.Random(20261123)  # noqa: S311 - reproducible kill timing, not crypto
    ids = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(ACTIONS)]
    receiver.script.extend([("sleep", 0.05)] * 40)  # slow answers: kills land during sends too
    env = relay_env(tmp_path, standin, receiver, poll_interval="0.1")
    first = RelayProcess(env)
    await first.start()
    await until(lambda: any("poll.completed" in line for line in first.output), timeout_s=20)
    await first.kill()
    feeder = asyncio.create_task(complete_slowly(standin, ids))
    kills = 1
    for _ in range(KILLS):
        relay = RelayProcess(env)
        await relay.start()
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        await relay.kill()
        kills += 1
    await feeder
    final = RelayProcess(env)
    await final.start()
    await until(lambda: any("relay.started" in line for line in final.output), timeout_s=20)
    expected = {event_id_for(i, "async_action.failed" if n % 3 == 0 else "async_action.completed") for n, i in enumerate(ids)}
    try:
        await until(lambda: expected <= receiver.delivered_ids(), timeout_s=30)
    except BaseException:
        print("missing", len(expected - receiver.delivered_ids()), "".join(final.output[-15:]))
        raise
    status = await final.terminate()
    assert status == 0, "".join(final.output[-10:])
    assert receiver.delivered_ids() == expected, "no event other than the expected ones"
    bodies: dict[str, set[bytes]] = {}
    for r in receiver.delivered:
        bodies.setdefault(r.event_id, set()).add(r.body)
    assert all(len(b) == 1 for b in bodies.values()), "a duplicate carries the same id and the same bytes"
    print(f"kills={kills} events={len(expected)} deliveries={len(receiver.delivered)} duplicates={len(receiver.delivered) - len(expected)}")
