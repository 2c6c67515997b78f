"""SIGKILL the real daemon while it catches up on a list backlog: the restart resumes it and loses nothing."""

from __future__ import annotations

from collections import Counter

from daemon.model import event_id_for
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess

BURST = 700


def catching_up(output: list[str]) -> bool:
    """Whether a cycle has read backlog pages and the backlog has not closed yet."""
    return any('"backlog_pages"' in line for line in output) and not any("list.caught_up" in line for line in output)


async def test_sigkill_while_catching_up_loses_nothing(standin, receiver, tmp_path):
    """A cap of 2 pages, 700 actions finished at once, a SIGKILL mid catch-up: after a restart all 700 arrive, one id each."""
    env = relay_env(tmp_path, standin, receiver, max_pages_per_cycle="2", poll_interval="0.2", idle_poll_interval="0.2")
    first = RelayProcess(env)
    await first.start()
    await until(lambda: any("poll.completed" in line for line in first.output), timeout_s=20)
    ids = [standin.add_action("VOUCHERS.METADATA_UPDATE") for _ in range(BURST)]
    for action_id in ids:
        standin.complete_action(action_id)
    await until(lambda: catching_up(first.output), timeout_s=20, interval_s=0.005)
    await first.kill()
    delivered_before_kill = len(receiver.delivered_ids())
    second = RelayProcess(env)
    await second.start()
    expected = {event_id_for(i, "async_action.completed") for i in ids}
    await until(lambda: expected <= receiver.delivered_ids(), timeout_s=40)
    await until(lambda: any("list.caught_up" in line for line in second.output), timeout_s=10)
    assert await second.terminate() == 0
    assert receiver.delivered_ids() == expected
    ids_per_action = Counter(r.envelope["data"]["id"] for r in {r.event_id: r for r in receiver.delivered}.values())
    assert set(ids_per_action.values()) == {1}
    assert delivered_before_kill < BURST, "the kill landed before the catch-up was over"
