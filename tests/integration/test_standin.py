"""The Voucherify stand-in answers like the documented async-actions API, faults included."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from daemon.demo.scenario import play_demo_scenario
from daemon.demo.standin import VoucherifyStandIn
from daemon.demo.wire import documented_example

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DOCS = Path("/work/shared/voucherify/examples")
AUTH = {"X-App-Id": "demo-app", "X-App-Token": "demo-token"}
LIST = "/v1/async-actions"
T0 = datetime(2023, 1, 20, 7, 41, 33, 86000, tzinfo=UTC)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: datetime = T0) -> None:
        """Start at now."""
        self.now = now

    def __call__(self) -> datetime:
        """Tell the time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    """Give a clock frozen at T0."""
    return FakeClock()


@pytest.fixture
async def standin(clock: FakeClock) -> AsyncIterator[VoucherifyStandIn]:
    """Serve a stand-in on a free port for the test's duration."""
    server = VoucherifyStandIn(clock=clock)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def session(standin: VoucherifyStandIn) -> AsyncIterator[aiohttp.ClientSession]:
    """Open a client session that authenticates against the stand-in."""
    async with aiohttp.ClientSession(base_url=standin.base_url, headers=AUTH) as client:
        yield client


async def get_json(session: aiohttp.ClientSession, path: str, **params: str) -> tuple[int, Any]:
    """GET path and return the status and decoded JSON body."""
    async with session.get(path, params=params) as response:
        return response.status, await response.json()


def documented(name: str) -> dict[str, Any]:
    """Load the documented error example in file name."""
    (example,) = json.loads((DOCS / name).read_text()).values()
    return dict(example["value"])


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """Drop the request_id, which is fresh on every answer."""
    return {k: v for k, v in body.items() if k != "request_id"}


async def test_paging_by_end_date_returns_every_action_once_newest_first(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Paging 250 actions by end_date=last created_at yields each exactly once, newest first."""
    added = [standin.add_action() for _ in range(250)]
    seen: list[dict[str, Any]] = []
    params = {"limit": "100"}
    while True:
        status, body = await get_json(session, LIST, **params)
        assert status == 200
        seen += body["async_actions"]
        if not body["has_more"]:
            break
        params["end_date"] = body["async_actions"][-1]["created_at"]
    assert [a["id"] for a in seen] == added[::-1]
    assert [a["created_at"] for a in seen] == sorted((a["created_at"] for a in seen), reverse=True)


async def test_actions_added_without_created_at_get_strictly_increasing_times(
    standin: VoucherifyStandIn,
) -> None:
    """Actions added while the clock stands still are spaced 1 ms apart."""
    first, second = standin.add_action(), standin.add_action()
    assert standin.actions[first]["created_at"] == "2023-01-20T07:41:33.086Z"
    assert standin.actions[second]["created_at"] == "2023-01-20T07:41:33.087Z"


@pytest.mark.parametrize(
    ("end_date", "expected"),
    [
        ("2023-01-20T07:41:33.086Z", ["midnight-before"]),
        ("2023-01-20T07:41:33.087Z", ["at", "midnight-before"]),
        ("2023-01-20T07:41:34Z", ["at", "midnight-before"]),
        ("2023-01-20T00:00:00.000Z", ["midnight-before"]),
        ("2023-01-20", ["midnight-before"]),
        ("2023-01-21", ["at", "midnight-before"]),
    ],
)
async def test_end_date_is_exclusive(standin: VoucherifyStandIn, session: aiohttp.ClientSession, end_date: str, expected: list[str]) -> None:
    """An action created exactly at end_date is left out; plain dates mean midnight UTC."""
    before_midnight = datetime(2023, 1, 19, 23, 59, 59, 999000, tzinfo=UTC)
    ids = {"at": standin.add_action(created_at=T0)}
    ids["midnight-before"] = standin.add_action(created_at=before_midnight)
    _, body = await get_json(session, LIST, end_date=end_date)
    assert [a["id"] for a in body["async_actions"]] == [ids[name] for name in expected]


async def test_ties_on_created_at_are_ordered_by_id_descending(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Actions sharing a created_at come newest first, then by id descending."""
    for action_id in ("aa_000000000000000001", "aa_000000000000000003", "aa_000000000000000002"):
        standin.add_action(id=action_id, created_at=T0)
    _, body = await get_json(session, LIST)
    assert [a["id"][-1] for a in body["async_actions"]] == ["3", "2", "1"]


async def test_limit_defaults_to_ten_and_reports_has_more(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Without limit the list returns 10 actions and has_more tells there are others."""
    for _ in range(11):
        standin.add_action()
    _, body = await get_json(session, LIST)
    assert (len(body["async_actions"]), body["has_more"]) == (10, True)
    _, body = await get_json(session, LIST, limit="11")
    assert (len(body["async_actions"]), body["has_more"]) == (11, False)


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"limit": ""}])
async def test_limit_out_of_range_is_rejected_with_invalid_query_params(session: aiohttp.ClientSession, params: dict[str, str]) -> None:
    """A limit outside 1..100 answers 400 with the documented invalid_query_params shape."""
    status, body = await get_json(session, LIST, **params)
    expected = documented("list_400_error_example.json")
    assert status == 400
    assert body.keys() == expected.keys()
    assert (body["code"], body["key"], body["message"]) == (
        400,
        "invalid_query_params",
        "Invalid query params",
    )
    assert "limit" in body["details"]
    assert body["request_id"].startswith("v-")


@pytest.mark.parametrize("end_date", ["yesterday", "2023-13-01", "20230120", "2023-01-20 07:41", ""])
async def test_invalid_end_date_answers_the_documented_400_body(session: aiohttp.ClientSession, end_date: str) -> None:
    """An end_date that is not ISO 8601 answers exactly the documented 400 body."""
    status, body = await get_json(session, LIST, end_date=end_date)
    assert status == 400
    assert without_request_id(body) == without_request_id(documented("list_400_error_example.json"))


async def test_unknown_id_answers_the_documented_404_body(session: aiohttp.ClientSession) -> None:
    """GET of an unknown id answers 404 shaped like the documented example, naming the id."""
    expected = documented("get_404_error_example.json") | {
        "details": "Cannot find async_action with id aa_0aeb82bd55d5beffb",
    }
    status, body = await get_json(session, f"{LIST}/aa_0aeb82bd55d5beffb")
    assert status == 404
    assert without_request_id(body) == without_request_id(expected)
    assert list(body) == list(expected)


@pytest.mark.parametrize("headers", [{}, {"X-App-Id": "demo-app"}, {**AUTH, "X-App-Token": "wrong"}])
async def test_missing_or_wrong_credentials_answer_401(standin: VoucherifyStandIn, headers: dict[str, str]) -> None:
    """Requests without both matching X-App-Id and X-App-Token answer 401 unauthorized."""
    async with aiohttp.ClientSession(base_url=standin.base_url, headers=headers) as client:
        status, body = await get_json(client, LIST)
    assert status == 401
    assert (body["code"], body["key"], body["message"]) == (401, "unauthorized", "Unauthorized")
    assert body["request_id"].startswith("v-")


async def test_list_omits_result_that_get_includes(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """List items never carry result or extra fields while GET returns the full action."""
    action_id = standin.add_action("VOUCHERS.IMPORT", note="extra")
    standin.complete_action(action_id, example="VOUCHERS.IMPORT")
    _, listed = await get_json(session, LIST)
    _, full = await get_json(session, f"{LIST}/{action_id}")
    item = listed["async_actions"][0]
    assert "result" not in item
    assert "note" not in item
    assert full["result"] == documented_example("VOUCHERS.IMPORT")["result"]
    assert full == standin.actions[action_id]
    assert item == {k: v for k, v in full.items() if k not in ("result", "note")}


async def test_optional_fields_appear_only_once_set(standin: VoucherifyStandIn, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    """operation_status and processing_time appear once set; timestamps look like Voucherify's."""
    action_id = standin.add_action("VOUCHERS.BULK_UPDATE")
    _, before = await get_json(session, f"{LIST}/{action_id}")
    clock.advance(1.5)
    standin.complete_action(action_id, example="VOUCHERS.BULK_UPDATE")
    _, after = await get_json(session, f"{LIST}/{action_id}")
    assert {"operation_status", "processing_time", "result"}.isdisjoint(before)
    assert (after["operation_status"], after["processing_time"], after["progress"]) == (
        "SUCCESS",
        1500,
        100,
    )
    assert TIMESTAMP.match(after["created_at"])
    assert TIMESTAMP.match(after["updated_at"])
    assert after["updated_at"] == "2023-01-20T07:41:34.586Z"


async def test_removed_action_disappears(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """After remove_action, GET answers 404 and the list no longer shows it."""
    kept, removed = standin.add_action(), standin.add_action()
    standin.remove_action(removed)
    status, _ = await get_json(session, f"{LIST}/{removed}")
    _, listed = await get_json(session, LIST)
    assert status == 404
    assert [a["id"] for a in listed["async_actions"]] == [kept]


async def test_example_actions_match_the_documented_bodies(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """add_example_actions adds 22 actions whose GET bodies equal the docs but for ids and times."""
    ids = standin.add_example_actions()
    examples = json.loads((DOCS / "get_async_action_all_22_examples.json").read_text())
    fresh = {"id", "request_id", "created_at", "updated_at"}
    assert len(set(ids)) == 22
    for action_id, example in zip(ids, examples.values(), strict=True):
        _, body = await get_json(session, f"{LIST}/{action_id}")
        assert {k: v for k, v in body.items() if k not in fresh} == {k: v for k, v in example.items() if k not in fresh}
        assert re.fullmatch(r"aa_[0-9a-f]{18}", body["id"])


@pytest.mark.parametrize(("fault", "status"), [("500", 500), ("502", 502), ("503", 503), ("401", 401), ("403", 403)])
async def test_status_faults_answer_once_then_recover(standin: VoucherifyStandIn, session: aiohttp.ClientSession, fault: str, status: int) -> None:
    """An injected status fault answers that status for the next request only."""
    standin.inject(fault)
    async with session.get(LIST) as first:
        assert first.status == status
    async with session.get(LIST) as second:
        assert second.status == 200


async def test_fault_times_and_path_select_the_requests_hit(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """A fault scripted for "get" twice spares list requests and is used up after two gets."""
    action_id = standin.add_action()
    standin.inject("503", times=2, path="get")
    statuses = []
    for path in (LIST, f"{LIST}/{action_id}", LIST, f"{LIST}/{action_id}", f"{LIST}/{action_id}"):
        async with session.get(path) as response:
            statuses.append(response.status)
    assert statuses == [200, 503, 200, 503, 200]


async def test_injected_429_sends_retry_headers(standin: VoucherifyStandIn, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    """An injected 429 carries Retry-After and X-Rate-Limit-Retry as epoch seconds."""
    standin.inject("429", retry_after=7)
    async with session.get(LIST) as response:
        body = await response.json()
    assert (response.status, body["code"], body["key"]) == (429, 429, "too_many_requests")
    assert response.headers["Retry-After"] == "7"
    assert int(response.headers["X-Rate-Limit-Retry"]) == int(clock.now.timestamp()) + 1 + 7
    assert response.headers["X-Rate-Limit-Remaining"] == "0"


def test_a_misspelt_fault_parameter_is_refused(standin: VoucherifyStandIn) -> None:
    """A fault parameter the stand-in does not read (retry_after_s for retry_after) is refused, not silently ignored."""
    with pytest.raises(ValueError, match="retry_after_s"):
        standin.inject("429", retry_after_s=60)
    assert standin.faults.pending == ()


async def test_timeout_fault_delays_the_answer(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """A timeout fault holds the answer long enough for the client to time out."""
    standin.inject("timeout", delay_s=5)
    with pytest.raises(TimeoutError):
        async with session.get(LIST, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    async with session.get(LIST) as response:
        assert response.status == 200


async def test_short_timeout_fault_answers_normally_after_the_delay(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """A timeout shorter than the client's patience still answers the normal body."""
    standin.inject("timeout", delay_s=0.05)
    status, body = await get_json(session, LIST)
    assert (status, body["object"]) == (200, "list")


async def test_reset_fault_closes_the_connection(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Resets drop the connection unanswered; it takes two because aiohttp retries a GET once."""
    standin.inject("reset", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with session.get(LIST):
            pass
    assert [r.status for r in standin.requests] == [0, 0]


async def test_single_reset_is_absorbed_by_aiohttp_retry(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """One reset is invisible to an aiohttp client, which silently resends the idempotent GET."""
    standin.inject("reset")
    status, _ = await get_json(session, LIST)
    assert (status, [r.status for r in standin.requests]) == (200, [0, 200])


async def test_malformed_fault_answers_200_with_non_json(session: aiohttp.ClientSession, standin: VoucherifyStandIn) -> None:
    """A malformed fault answers 200 with a body that does not parse as JSON."""
    standin.inject("malformed")
    async with session.get(LIST) as response:
        text = await response.text()
    assert response.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_truncated_fault_cuts_valid_json_in_half(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """A truncated fault answers half the normal body with a matching Content-Length."""
    standin.add_example_actions()
    async with session.get(LIST) as response:
        whole = await response.read()
    standin.inject("truncated")
    async with session.get(LIST) as response:
        cut = await response.read()
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(cut) == len(whole) // 2
    assert whole.startswith(cut)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


async def test_shuffle_fault_returns_the_page_oldest_first(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """A shuffle fault hands out the same page in ascending created_at order, and only on lists."""
    ids = [standin.add_action() for _ in range(5)]
    standin.inject("shuffle", path="any")
    status, _ = await get_json(session, f"{LIST}/{ids[0]}")
    _, shuffled = await get_json(session, LIST, limit="3")
    _, normal = await get_json(session, LIST, limit="3")
    assert status == 200
    assert [a["id"] for a in shuffled["async_actions"]] == ids[2:]
    assert [a["id"] for a in normal["async_actions"]] == ids[:1:-1]


async def test_rate_limit_answers_429_until_the_window_rolls(clock: FakeClock) -> None:
    """At 3 calls a minute the 4th answers 429 with retry headers; calls pass again 60 s later."""
    server = VoucherifyStandIn(rate_limit_per_minute=3, clock=clock)
    async with aiohttp.ClientSession(base_url=await server.start(), headers=AUTH) as client:
        remaining = []
        for _ in range(3):
            async with client.get(LIST) as response:
                remaining.append(response.headers["X-Rate-Limit-Remaining"])
            clock.advance(10)
        async with client.get(LIST) as limited:
            body = await limited.json()
        clock.advance(30)
        async with client.get(LIST) as after:
            assert after.status == 200
    await server.close()
    assert remaining == ["2", "1", "0"]
    assert (limited.status, body["code"], body["key"]) == (429, 429, "too_many_requests")
    assert limited.headers["Retry-After"] == "30"
    assert limited.headers["X-Rate-Limit-Retry"] == str(int((T0 + timedelta(seconds=31)).timestamp()) + 30)
    assert (limited.headers["X-Rate-Limit-Type"], limited.headers["X-Rate-Limit-Limit"]) == (
        "api_calls",
        "3",
    )
    assert limited.headers["X-Rate-Limit-Remaining"] == "0"


async def test_every_response_carries_rate_limit_headers(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Successes, errors and faults alike carry X-Rate-Limit-Limit and X-Rate-Limit-Remaining."""
    standin.inject("502")
    for path in (LIST, LIST, f"{LIST}/aa_missing", "/v1/unknown"):
        async with session.get(path) as response:
            assert {"X-Rate-Limit-Limit", "X-Rate-Limit-Remaining"} <= response.headers.keys()


async def test_requests_are_recorded_and_counted(standin: VoucherifyStandIn, session: aiohttp.ClientSession) -> None:
    """Each request is recorded in order with its query and status, and counted by path."""
    await get_json(session, LIST, limit="5")
    await get_json(session, f"{LIST}/aa_missing")
    await get_json(session, "/v1/unknown")
    assert [(r.path, r.query, r.status) for r in standin.requests] == [
        (LIST, {"limit": "5"}, 200), (f"{LIST}/aa_missing", {}, 404), ("/v1/unknown", {}, 404),
    ]  # fmt: skip
    assert (standin.count("list"), standin.count("get"), standin.count()) == (1, 1, 3)


async def test_demo_scenario_ends_with_the_promised_outcomes(standin: VoucherifyStandIn) -> None:
    """The demo ends with a partial import, a bulk update, a failed and an all-rows-failed one."""
    await play_demo_scenario(standin, step_s=0)
    outcomes = {a["type"]: a for a in standin.actions.values()}
    customers, bulk = outcomes["CUSTOMERS.IMPORT_CSV"], outcomes["VOUCHERS.BULK_UPDATE"]
    products, vouchers = outcomes["PRODUCTS.IMPORT_CSV"], outcomes["VOUCHERS.IMPORT_CSV"]
    assert customers["status"] == "DONE"
    assert customers["result"]["done_count"] > 0 < customers["result"]["failed_count"]
    assert (bulk["status"], bulk["operation_status"]) == ("DONE", "SUCCESS")
    assert len(bulk["result"]["reports"]) == 1
    assert products["status"] == "FAILED"
    assert products["result"]["message"]
    assert (vouchers["status"], vouchers["result"]["done_count"]) == ("DONE", 0)
    assert all(a["progress"] == 100 for a in outcomes.values())
