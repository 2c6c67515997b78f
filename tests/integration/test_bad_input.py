"""Bad input from the API: junk list entries are logged and skipped, and the good actions around them still produce events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from daemon.demo.standin import VoucherifyStandIn
from daemon.demo.wire import json_response
from daemon.model import event_id_for
from tests.conftest import APP_TOKEN, baseline, running, until

JUNK: list[Any] = [
    {"type": "CUSTOMERS.IMPORT_CSV", "status": "DONE", "created_at": "2026-01-01T00:00:00.000Z"},  # no id
    {"id": 12345, "status": "DONE"},  # id not a string
    {"id": None, "status": "FAILED"},
    {"id": "", "status": "DONE"},
    {"id": ["aa_in_a_list"], "status": "DONE"},
    "aa_0123456789abcdef01",  # a list entry that is a string
    42,
    None,
    ["DONE"],
    {"id": "aa_junk_status", "status": 7, "progress": "half", "created_at": "garbage"},  # status a number
    {"id": "aa_junk_created", "status": "IN_PROGRESS", "created_at": "yesterday-ish", "updated_at": 5},  # created_at garbage
    {"id": "aa_junk_types", "type": ["x"], "status": {"state": "DONE"}, "operation_status": 3, "created_at": None},
]
INVALID = 9  # the entries above without a usable id: not a string, or empty


class JunkStandIn(VoucherifyStandIn):
    """The stand-in, serving ``head`` first and ``junk`` after the first real entry on every list page."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head: list[Any] = []
        self.junk: list[Any] = []

    async def _list(self, request: web.Request) -> web.Response:
        response = await super()._list(request)
        body = json.loads(response.body)  # type: ignore[arg-type]
        if response.status == 200:
            actions = body["async_actions"]
            body["async_actions"] = [*self.head, *actions[:1], *self.junk, *actions[1:]]
        return json_response(body, status=response.status)


@pytest.fixture
async def standin():
    """Run a stand-in whose list pages can carry junk (overrides the shared fixture)."""
    server = JunkStandIn(app_id="app-123", app_token=APP_TOKEN)
    await server.start()
    yield server
    await server.close()


async def test_junk_list_entries_are_logged_and_skipped(standin, receiver, make_settings):
    """Entries without a usable id, with numeric statuses or garbage timestamps never stop the cycle, and never become events."""
    ids = [standin.add_action("CUSTOMERS.IMPORT_CSV") for _ in range(6)]
    standin.junk = JUNK
    with capture_logs() as logs:
        async with running(make_settings(list_page_size="4")) as relay:
            await baseline(relay)
            for n, action_id in enumerate(ids):
                standin.complete_action(action_id, status="FAILED" if n % 2 else "DONE", result={"message": "m", "done_count": 1})
            fresh = standin.add_action("VOUCHERS.IMPORT")
            standin.complete_action(fresh, result={"message": "m", "done_count": 2})
            ids.append(fresh)
            expected = {event_id_for(i, "async_action.failed" if n % 2 and n < 6 else "async_action.completed") for n, i in enumerate(ids)}
            await until(lambda: expected <= receiver.delivered_ids())
            lists = standin.count("list")
            await until(lambda: standin.count("list") >= lists + 3)
            assert relay.running
    assert receiver.delivered_ids() == expected
    events = [e["event"] for e in logs]
    assert "poll.crashed" not in events
    assert "poll.failed" not in events
    skipped = [e for e in logs if e["event"] == "list.invalid_entries"]
    assert skipped, "junk entries are logged"
    assert all(e["skipped"] == INVALID for e in skipped), skipped
    assert all(e["log_level"] == "warning" for e in skipped)


async def test_an_entry_dated_in_the_future_does_not_hide_later_completions(standin, receiver, make_settings):
    """One list entry with a created_at far in the future does not stop actions created and finished between polls from being sent."""
    standin.head = [{"id": "aa_from_the_future", "type": "VOUCHERS.IMPORT", "status": "IN_PROGRESS", "created_at": "2999-01-01T00:00:00.000Z"}]
    async with running(make_settings()) as relay:
        await baseline(relay)
        lists = standin.count("list")
        await until(lambda: standin.count("list") >= lists + 2)
        action_id = standin.add_action("VOUCHERS.BULK_UPDATE")
        standin.complete_action(action_id, result={"message": "m", "done_count": 1})
        await until(lambda: len(receiver.delivered) == 1, timeout_s=5)
    assert receiver.delivered_ids() == {event_id_for(action_id, "async_action.completed")}


async def test_an_empty_id_is_logged_as_invalid(standin, make_settings):
    """A list entry whose id is the empty string is counted in list.invalid_entries like any other entry without a usable id."""
    standin.add_action()
    standin.junk = [{"id": "", "status": "DONE"}]
    with capture_logs() as logs:
        async with running(make_settings()) as relay:
            await baseline(relay)
    assert [e["skipped"] for e in logs if e["event"] == "list.invalid_entries"][:1] == [1]
