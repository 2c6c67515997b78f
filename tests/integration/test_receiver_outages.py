"""Receiver outages: a webhook receiver that errors, hangs or resets for a while still gets every event, with stable ids."""

from __future__ import annotations

from collections import defaultdict

from structlog.testing import capture_logs

from daemon.demo.receiver import verify_signature
from daemon.model import event_id_for
from tests.conftest import WEBHOOK_SECRET, baseline, outbox_has, running, until


def named_sink(receiver, name: str, **more: str) -> dict[str, str]:
    """Return settings overrides for one named webhook sink (and no RELAY_WEBHOOK_URL shortcut)."""
    prefix = f"sinks__{name}__"
    return {"webhook_url": "", "webhook_secret": "", prefix + "kind": "webhook", prefix + "url": receiver.url, prefix + "secret": WEBHOOK_SECRET} | {
        prefix + key: value for key, value in more.items()
    }


async def test_a_receiver_slower_than_the_sink_timeout_is_retried(standin, receiver, make_settings):
    """Attempts the receiver answers after the sink's 0.5 s timeout count as failures; a later attempt delivers the same event."""
    action_id = standin.add_action()
    receiver.script.extend([("sleep", 0.6), ("sleep", 0.6)])
    with capture_logs() as logs:
        async with running(make_settings(**named_sink(receiver, "x", timeout_s="0.5"))) as relay:
            await baseline(relay)
            standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await until(lambda: len(receiver.requests) >= 3 and outbox_has(relay, pending=0), timeout_s=10)
            stats = await relay.stores.outbox.stats()
    assert (stats.pending, stats.dead) == (0, 0)
    retries = [e for e in logs if e["event"] == "delivery.retry_scheduled"]
    assert [e["caused_by"] for e in retries[:2]] == ["timed out after 0.5s"] * 2
    assert [e["sink"] for e in logs if e["event"] == "delivery.sent"] == ["x"]
    assert {r.event_id for r in receiver.requests} == {event_id_for(action_id, "async_action.completed")}


async def test_an_outage_of_every_kind_then_recovery_delivers_everything(standin, receiver, make_settings):
    """503s, 500 with Retry-After, resets and hangs past the timeout for a dozen attempts, then 200: every event arrives, signed, ids stable."""
    ids = [standin.add_action("VOUCHERS.IMPORT") for _ in range(5)]
    outage = [503, "reset", ("sleep", 0.6), ("retry-after", 500, 0), 503, "reset", 502, ("sleep", 0.6), 503, 429, "reset", 503]
    receiver.script.extend(outage)
    async with running(make_settings(**named_sink(receiver, "x", timeout_s="0.5", max_concurrency="2"))) as relay:
        await baseline(relay)
        for action_id in ids:
            standin.complete_action(action_id, result={"message": "3 vouchers imported", "done_count": 3, "failed_count": 0})
        expected = {event_id_for(i, "async_action.completed") for i in ids}
        await until(lambda: expected <= receiver.delivered_ids() and outbox_has(relay, pending=0), timeout_s=15)
        assert await outbox_has(relay, dead=0)
    assert not receiver.script, "the whole outage was played"
    assert receiver.delivered_ids() == expected
    bodies = defaultdict(set)
    for received in receiver.requests:
        if received.status:
            bodies[received.event_id].add(received.body)
            assert verify_signature(secret=WEBHOOK_SECRET, headers=received.headers, body=received.body)
    assert all(len(b) == 1 for b in bodies.values()), "every attempt of an event carries the same id and bytes"
