"""SIGTERM in the middle of a backlog: what was sent is recorded, so a restart sends nothing twice."""

from __future__ import annotations

from collections import Counter

from daemon.store.sqlite import open_sqlite
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess

BACKLOG = 200
SLOW_ANSWERS = 40


async def test_sigterm_records_what_was_sent_and_a_restart_resends_nothing(standin, receiver, tmp_path):
    """200 events, a receiver taking 1 s per request, SIGTERM while it sends: after a restart every event arrived exactly once."""
    ids = [standin.add_action() for _ in range(BACKLOG)]
    receiver.script.extend([("sleep", 1.0)] * SLOW_ANSWERS)
    env = relay_env(tmp_path, standin, receiver)
    first = RelayProcess(env)
    await first.start()
    await until(lambda: any("poll.completed" in line for line in first.output), timeout_s=20)
    for action_id in ids:
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
    await until(lambda: len(receiver.requests) >= 6, timeout_s=20)  # mid-batch: more sends in flight and queued
    assert await first.terminate(timeout_s=15) == 0
    assert not any("relay.shutdown_cut" in line for line in first.output)
    sent_before = Counter(r.event_id for r in receiver.requests)
    assert len(sent_before) < BACKLOG
    stores = open_sqlite(tmp_path / "state.db", mode="ro")
    pending = await stores.outbox.list(dead=False, limit=BACKLOG)
    await stores.close()
    assert len(pending) == BACKLOG - len(sent_before), "every answer was recorded, every other row is still pending"
    assert all(row.attempts == 0 for row in pending), "rows not started were left untouched"
    receiver.script.clear()
    second = RelayProcess(env)
    await second.start()
    await until(lambda: len(receiver.delivered_ids()) == BACKLOG, timeout_s=30)
    assert await second.terminate() == 0
    per_event = Counter(r.event_id for r in receiver.requests)
    assert max(per_event.values()) == 1, f"sent twice: {[i for i, n in per_event.items() if n > 1][:5]}"
