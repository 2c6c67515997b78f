"""The relay's own health and metrics endpoints, on a real port."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import APP_TOKEN, WATCH_TOKEN, WEBHOOK_SECRET, baseline, running, until


async def get(port: int, path: str) -> tuple[int, str]:
    """GET a path on the relay's listener."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_ready_after_a_poll_and_metrics_count_the_work(standin, receiver, make_settings):
    """/readyz turns 200 after a successful poll; /metrics counts polls, API calls, events and deliveries."""
    action_id = standin.add_action("CUSTOMERS.IMPORT_CSV")
    async with running(make_settings(http_listen="127.0.0.1:0")) as relay:
        assert relay.http_port
        await baseline(relay)
        assert (await get(relay.http_port, "/healthz"))[0] == 200
        assert (await get(relay.http_port, "/readyz"))[0] == 200
        standin.complete_action(action_id, example="PRODUCTS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)
        await until(lambda: relay.metrics.render().count(b'result="delivered"') > 0)
        status, text = await get(relay.http_port, "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    event_labels = (("action_type", "CUSTOMERS.IMPORT_CSV"), ("event_type", "async_action.completed"), ("outcome", "partial"), ("project", "default"))
    assert samples[("voucherify_relay_events_total", event_labels)] == 1
    assert samples[("voucherify_relay_deliveries_total", (("result", "delivered"), ("sink", "webhook")))] == 1
    assert samples[("voucherify_relay_api_requests_total", (("endpoint", "get"), ("project", "default"), ("status", "200")))] == 1
    assert sum(v for (name, labels), v in samples.items() if name == "voucherify_relay_polls_total" and ("outcome", "success") in labels) >= 2
    for secret in (APP_TOKEN, WEBHOOK_SECRET, receiver.url):
        assert secret not in text


async def test_metrics_show_the_outbox_as_it_fills_and_drains(standin, receiver, make_settings):
    """/metrics, which cannot await the store, shows a delivery pending while the receiver fails and none once it answers."""
    action_id = standin.add_action("CUSTOMERS.IMPORT_CSV")
    receiver.default_status = 503
    async with running(make_settings(http_listen="127.0.0.1:0")) as relay:
        assert relay.http_port
        await baseline(relay)
        standin.complete_action(action_id, example="PRODUCTS.IMPORT_CSV")
        await until(lambda: pending_on_metrics(relay.http_port, 1), timeout_s=5)
        receiver.default_status = 204
        await until(lambda: len(receiver.delivered) == 1, timeout_s=10)
        await until(lambda: pending_on_metrics(relay.http_port, 0), timeout_s=5)


async def pending_on_metrics(port: int, expected: int) -> bool:
    """Whether /metrics reports ``expected`` pending deliveries."""
    _, text = await get(port, "/metrics")
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "voucherify_relay_outbox_pending_deliveries"]
    return found == [expected]


async def test_not_ready_when_credentials_are_refused(standin, make_settings):
    """A 401 makes /readyz answer 503 naming the cause, while /healthz stays 200."""
    standin.inject("401", path="list", times=5)
    async with running(make_settings(http_listen="127.0.0.1:0")) as relay:
        await until(lambda: relay.pacing.auth_failures >= 1)
        status, body = await get(relay.http_port, "/readyz")
        assert (status, "credentials" in body) == (503, True)
        assert (await get(relay.http_port, "/healthz"))[0] == 200


async def test_watch_endpoint_wakes_an_idle_relay(standin, receiver, make_settings):
    """POST /watch with the token makes an idle relay poll at once; without the token it is refused."""
    settings = make_settings(http_listen="127.0.0.1:0", idle_poll_interval="600", watch_token=WATCH_TOKEN)
    async with running(settings) as relay:
        await baseline(relay)
        action_id = standin.add_action(status="ENQUEUED")
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        url = f"http://127.0.0.1:{relay.http_port}/watch"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"action_id": action_id}) as refused:
                assert refused.status == 401
            assert receiver.delivered == [], "idle: the next poll is ten minutes away"
            headers = {"Authorization": f"Bearer {WATCH_TOKEN}"}
            async with session.post(url, json={"action_id": action_id}, headers=headers) as accepted:
                assert accepted.status == 202
            async with session.post(url, json={"action_id": "../etc"}, headers=headers) as invalid:
                assert invalid.status == 400
        await until(lambda: len(receiver.delivered) == 1, timeout_s=3)


async def test_watch_calls_coalesce_to_one_poll_per_fast_interval(standin, make_settings):
    """50 POST /watch calls in 3 s with a 1 s poll interval cause at most one list request per second, plus one."""
    settings = make_settings(http_listen="127.0.0.1:0", poll_interval="1", idle_poll_interval="600", watch_token=WATCH_TOKEN)
    async with running(settings) as relay:
        await baseline(relay)
        url = f"http://127.0.0.1:{relay.http_port}/watch"
        headers = {"Authorization": f"Bearer {WATCH_TOKEN}"}
        lists_before, started = standin.count("list"), asyncio.get_running_loop().time()
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                async with session.post(url, json={"action_id": "aa_0123456789"}, headers=headers) as accepted:
                    assert accepted.status == 202
                await asyncio.sleep(0.06)
        duration_s = asyncio.get_running_loop().time() - started
        made = standin.count("list") - lists_before
    assert 1 <= made <= duration_s / 1 + 1
