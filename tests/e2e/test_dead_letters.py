"""A receiver gone longer than RELAY_DELIVERY_MAX_AGE, end to end: dead letters listed and replayed by the CLI, then delivered."""

from __future__ import annotations

import json

from daemon.model import event_id_for
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess


async def test_dead_letters_are_listed_replayed_and_delivered_by_the_cli(standin, receiver, tmp_path, run_cli):
    """`outbox list --dead` shows what expired, `outbox replay --dead` makes it due, and the running relay delivers it with the same ids."""
    ids = [standin.add_action("PRODUCTS.IMPORT_CSV") for _ in range(2)]
    receiver.default_status = 503
    env = relay_env(tmp_path, standin, receiver, delivery_max_age="1s")
    relay = RelayProcess(env)
    await relay.start()
    try:
        await until(lambda: any("poll.completed" in line for line in relay.output), timeout_s=20)
        for action_id in ids:
            standin.complete_action(action_id, result={"message": "2 products imported", "done_count": 2, "failed_count": 0})
        await until(lambda: sum("delivery.dead_lettered" in line for line in relay.output) >= 2, timeout_s=20)
        code, out, _ = await run_cli("outbox", "list", "--dead", "--json", env=env)
        assert code == 0
        dead = [json.loads(line) for line in out.splitlines()]
        expected = {event_id_for(i, "async_action.completed") for i in ids}
        assert {row["event_id"] for row in dead} == expected
        assert all(row["status"] == "dead" and "RELAY_DELIVERY_MAX_AGE" in row["last_error"] for row in dead)
        assert receiver.delivered == []
        receiver.default_status = 200
        code, out, _ = await run_cli("outbox", "replay", "--dead", env=env)
        assert (code, out.split()[0]) == (0, "2")
        await until(lambda: receiver.delivered_ids() == expected, timeout_s=10)
    finally:
        assert await relay.terminate() == 0
    assert len(receiver.delivered) == 2
