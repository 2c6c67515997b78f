"""Poison records and huge results: one bad action only affects itself, and no event outgrows RELAY_MAX_EVENT_BYTES."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from daemon.demo.standin import VoucherifyStandIn
from tests.conftest import APP_TOKEN, baseline, running, until

DEEP = b'{"id": "aa_poison", "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


class PoisonStandIn(VoucherifyStandIn):
    """The stand-in, answering GET with the raw bytes in ``raw`` for the ids listed there."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw: dict[str, bytes] = {}

    async def _get(self, request: web.Request) -> web.Response:
        body = self.raw.get(request.match_info["action_id"])
        if body is None:
            return await super()._get(request)
        return web.Response(body=body, content_type="application/json")


@pytest.fixture
async def standin():
    """Run a stand-in that can serve a poisoned detail (overrides the shared fixture)."""
    server = PoisonStandIn(app_id="app-123", app_token=APP_TOKEN)
    await server.start()
    yield server
    await server.close()


async def test_a_poisoned_detail_does_not_hold_back_a_normal_action(standin, receiver, make_settings):
    """A detail nested too deeply to decode fails alone: the normal action finishing in the same cycle is delivered at once."""
    poisoned, normal = standin.add_action("VOUCHERS.IMPORT"), standin.add_action("CUSTOMERS.IMPORT_CSV")
    standin.raw[poisoned] = DEEP
    with capture_logs() as logs:
        async with running(make_settings()) as relay:
            await baseline(relay)
            standin.complete_action(poisoned, result={"done_count": 1})
            standin.complete_action(normal, result={"done_count": 2})
            await until(lambda: len(receiver.delivered) >= 1)
            failed_before = sum(1 for e in logs if e["event"] == "action.detail_failed")
    assert [r.envelope["data"]["id"] for r in receiver.delivered] == [normal]
    assert receiver.delivered[0].envelope["data"]["done_count"] == 2
    events = [e["event"] for e in logs]
    assert "poll.crashed" not in events
    assert failed_before >= 1


async def test_a_detail_that_keeps_failing_is_given_up_and_sent_from_the_list(standin, receiver, make_settings):
    """After repeated failures on an action that finished long ago, its event goes out from the list entry, marked as such."""
    poisoned = standin.add_action("VOUCHERS.IMPORT")
    standin.raw[poisoned] = DEEP
    with capture_logs() as logs:
        async with running(make_settings()) as relay:
            await baseline(relay)
            standin.complete_action(poisoned, result={"done_count": 1})
            standin.update_action(poisoned, updated_at=datetime.now(UTC) - timedelta(hours=1))
            await until(lambda: len(receiver.delivered) == 1)
    data = receiver.delivered[0].envelope["data"]
    assert data["id"] == poisoned
    assert data["status"] == "DONE"
    assert data["detail_available"] is False
    assert "nested too deeply" in data["detail_error"]
    given_up = [e for e in logs if e["event"] == "action.detail_given_up"]
    assert len(given_up) == 1
    assert given_up[0]["attempts"] == 5


async def test_a_huge_result_is_delivered_within_the_event_cap(standin, receiver, make_settings):
    """A result with 50,000 failed rows arrives as one body within RELAY_MAX_EVENT_BYTES, marked truncated, with its counts."""
    action_id = standin.add_action("VOUCHERS.IMPORT")
    rows = [{"code": f"CODE-{i}", "row": i, "reason": "code already exists " * 10} for i in range(50_000)]
    async with running(make_settings(max_event_bytes="16384")) as relay:
        await baseline(relay)
        standin.complete_action(action_id, result={"done_count": 5, "failed_count": 50_000, "failed": rows})
        await until(lambda: len(receiver.delivered) == 1)
    received = receiver.delivered[0]
    assert len(received.body) <= 16384
    data = received.envelope["data"]
    assert data["truncated"] is True
    assert data["failed_count"] == 50_000
    assert data["result"] is None
    assert data["failures"][0]["code"] == "CODE-0"
    assert len(data["failures"]) + data["failures_omitted"] == 50_000
