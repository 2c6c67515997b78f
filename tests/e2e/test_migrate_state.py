"""``migrate-state`` from a live SQLite file to PostgreSQL, then a run on PostgreSQL: no flood, nothing lost."""

from __future__ import annotations

import json
import time

from daemon.bootstrap import build_relay
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.model import Event
from daemon.store import AttemptResults, CycleResult
from daemon.store.sqlite import open_sqlite
from daemon.voucherify import RetryPolicy
from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess
from tests.e2e.test_postgres_relay import PASSWORD, cli, with_password

FAST = RetryPolicy(max_attempts=3, backoff_max_s=0.05, backoff_multiplier_s=0.01)


def queued(name: str) -> Event:
    """Return an event left in the SQLite outbox by the earlier relay."""
    return Event(id=f"evt_{name}", type="async_action.completed", timestamp="2026-11-23T11:00:00.000Z", data={"id": f"aa_{name}"})


async def live_sqlite_state(tmp_path, standin: VoucherifyStandIn, receiver: RecordingReceiver) -> str:
    """Run a SQLite relay to its baseline, then leave one pending and one dead delivery in its outbox; return its URL."""
    env = relay_env(tmp_path, standin, receiver)
    relay = RelayProcess(env)
    await relay.start()
    try:
        await until(lambda: any("relay.started" in line for line in relay.output), timeout_s=20)
        await until(lambda: standin.count("list") >= 3, timeout_s=20)
    finally:
        assert await relay.terminate() == 0
    stores = open_sqlite(tmp_path / "state.db")
    try:
        now = time.time()
        await stores.calls.record([now - 10, now - 7200])
        await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(queued("pending"), ["webhook"]), (queued("dead"), ["webhook"])]), now=now)
        dead = next(d for d in await stores.outbox.claim_due(now=now, limit=10) if d.event_id == "evt_dead")
        await stores.outbox.apply_results(AttemptResults(dead=[(dead.row_id, "HTTP 410: endpoint gone")]), now=now)
    finally:
        await stores.close()
    return env["RELAY_STATE_URL"]


async def test_migrate_state_then_run_on_postgres_floods_nothing_and_loses_nothing(tmp_path, standin, receiver, pg_url):
    """After the move the relay sends no event for history, the pending row once, the dead row never, and new completions once."""
    for _ in range(3):
        standin.add_action("VOUCHERS.IMPORT_CSV", status="DONE", progress=100)
    in_flight = standin.add_action("CUSTOMERS.IMPORT_CSV")
    source = await live_sqlite_state(tmp_path, standin, receiver)
    assert receiver.requests == [], "the SQLite relay sent nothing: history only"
    target = with_password(pg_url)
    env = relay_env(tmp_path, standin, receiver, state_url=target)

    code, out = await cli(env, "migrate-state", "--from", source, "--to", target)
    assert code == 0, out
    assert "copied 4 actions (1 in flight), 1 pending and 1 dead deliveries" in out
    assert "1 API call times from the last hour" in out
    assert PASSWORD not in out
    code, listed = await cli(env, "outbox", "list", "--dead", "--json")
    [dead] = [json.loads(line) for line in listed.splitlines()]
    assert (dead["event_id"], dead["attempts"], dead["last_error"]) == ("evt_dead", 1, "HTTP 410: endpoint gone")

    relay = RelayProcess(env)
    await relay.start()
    try:
        await until(lambda: receiver.delivered_ids() >= {"evt_pending"}, timeout_s=20)
        standin.complete_action(in_flight, example="CUSTOMERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) >= 2, timeout_s=20)
        lists_before = standin.count("list")
        await until(lambda: standin.count("list") >= lists_before + 3, timeout_s=20)
    finally:
        assert await relay.terminate() == 0
    assert sorted(r.envelope["data"]["id"] for r in receiver.delivered) == sorted(["aa_pending", in_flight])
    code, listed = await cli(env, "outbox", "list", "--dead", "--json")
    assert [json.loads(line)["event_id"] for line in listed.splitlines()] == ["evt_dead"]


async def test_migrate_state_refuses_a_target_that_holds_state(tmp_path, standin, receiver, pg_url):
    """A second migrate-state into the same database exits 1, says why, and changes nothing."""
    stores = open_sqlite(tmp_path / "state.db")
    await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(queued("pending"), ["webhook"])]), now=time.time())
    await stores.close()
    env = relay_env(tmp_path, standin, receiver, state_url=pg_url)
    source = f"sqlite:///{tmp_path}/state.db"
    assert (await cli(env, "migrate-state", "--from", source, "--to", pg_url))[0] == 0
    code, out = await cli(env, "migrate-state", "--from", source, "--to", pg_url)
    assert code == 1
    assert "already holds relay state" in out
    code, listed = await cli(env, "outbox", "list", "--json")
    assert len(listed.splitlines()) == 1
    code, out = await cli(env, "migrate-state", "--from", "./state.db", "--to", pg_url)
    assert code == 78
    assert "--from" in out


async def test_build_relay_on_postgres_runs_in_process(standin, receiver, make_settings, pg_url):
    """The composition root opens PostgreSQL for a postgresql:// state URL (no instance lock) and the relay delivers from it."""
    action_id = standin.add_action("CUSTOMERS.IMPORT_CSV")
    relay = await build_relay(make_settings(state_url=pg_url), retry=FAST)
    await relay.start()
    try:
        assert relay.stores.kind == "postgres"
        await until(lambda: relay.last_poll is not None)
        standin.complete_action(action_id, example="CUSTOMERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)
    finally:
        await relay.stop(grace_s=2)
