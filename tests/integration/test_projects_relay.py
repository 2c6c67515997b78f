"""Several Voucherify projects in one relay (issue 13), each behind a stand-in of its own.

Each stand-in accepts only its own project's keys (anything else is a 401), so a request
sent with the wrong keys, or to the wrong API, shows up as a 401 on that stand-in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from daemon.bootstrap import open_stores
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.settings import RelaySettings, load_settings
from tests.conftest import WATCH_TOKEN, relay_base_env, running, until
from tests.fakes.slack_web import BOT_TOKEN, CHANNEL, FakeSlackWeb

PROJECTS = ("eu", "us")


@pytest.fixture
async def apis() -> AsyncIterator[dict[str, VoucherifyStandIn]]:
    """Run one stand-in per project, each with keys of its own."""
    servers = {name: VoucherifyStandIn(app_id=f"app-{name}", app_token=f"tok_{name}_0123456789abcdef") for name in PROJECTS}
    for server in servers.values():
        await server.start()
    yield servers
    for server in servers.values():
        await server.close()


@pytest.fixture
async def eu_receiver() -> AsyncIterator[RecordingReceiver]:
    """Run a second receiver, for a sink that takes only the project eu."""
    hook = RecordingReceiver()
    await hook.start()
    yield hook
    await hook.close()


def project_settings(tmp_path: Path, apis: dict[str, VoucherifyStandIn], receiver: RecordingReceiver, *names: str, **more: str) -> RelaySettings:
    """Return settings for the named projects (all by default) against their stand-ins, one webhook sink for every project."""
    env = relay_base_env(tmp_path, receiver)
    for name in names or PROJECTS:
        prefix = f"RELAY_PROJECTS__{name.upper()}__"
        env |= {f"{prefix}APP_ID": f"app-{name}", f"{prefix}APP_TOKEN": f"tok_{name}_0123456789abcdef", f"{prefix}API_URL": apis[name].base_url}
    env.update({f"RELAY_{k.upper()}": v for k, v in more.items()})
    return load_settings(env)


def refused(api: VoucherifyStandIn) -> int:
    """Count the requests a stand-in refused for their keys."""
    return sum(1 for r in api.requests if r.status == 401)


async def baselines(relay) -> None:
    """Wait until every project has taken its baseline."""
    await until(lambda: all(r.loop.last_poll is not None for r in relay.projects.values()))


async def test_each_project_polls_its_own_api_with_its_own_keys_and_events_carry_the_project(tmp_path, apis, receiver, eu_receiver):
    """Two projects: each stand-in sees only its own project's requests; events name their project, ids differ, a project filter routes."""
    settings = project_settings(tmp_path, apis, receiver, SINKS__EU_ONLY__KIND="webhook", SINKS__EU_ONLY__URL=eu_receiver.url, SINKS__EU_ONLY__PROJECTS="eu")
    same_id = "aa_0000000000000000shared"  # the same action id in both projects is two actions
    started = {name: api.add_action("CUSTOMERS.IMPORT_CSV", id=same_id, status="IN_PROGRESS") for name, api in apis.items()}
    async with running(settings) as relay:
        await baselines(relay)
        for name, api in apis.items():
            api.complete_action(started[name], example="CUSTOMERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 2 and len(eu_receiver.delivered) == 1)
    assert sorted(r.envelope["data"]["project"] for r in receiver.delivered) == ["eu", "us"]
    assert len({r.event_id for r in receiver.delivered}) == 2, "one action id in two projects: two webhook-ids"
    assert [r.envelope["data"]["project"] for r in eu_receiver.delivered] == ["eu"]
    for api in apis.values():
        assert api.count("list") >= 2
        assert refused(api) == 0, "every request carried the keys of the stand-in's own project"


@pytest.mark.parametrize("fault", ["429", "timeout", "401"])
async def test_one_projects_trouble_never_slows_another(tmp_path, apis, receiver, fault):
    """While eu answers 429, times out or refuses its keys, us polls on its own pace and its completions arrive as fast as before."""
    settings = project_settings(tmp_path, apis, receiver, API_TIMEOUT_S="0.5")
    eu, us = apis["eu"], apis["us"]
    async with running(settings) as relay:
        await baselines(relay)
        eu.inject(fault, times=1000, path="any", retry_after=60, delay_s=5)
        await asyncio.sleep(0.3)
        lists_before, t0 = us.count("list"), time.monotonic()
        latencies = []
        for _ in range(3):
            action = us.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS")
            seen = us.count("list")
            await until(lambda seen=seen: us.count("list") > seen + 1)  # the action was listed in flight
            done_at = time.monotonic()
            us.complete_action(action, example="VOUCHERS.IMPORT_CSV")
            await until(lambda a=action: any(r.envelope["data"]["id"] == a for r in receiver.delivered), timeout_s=5)
            latencies.append(time.monotonic() - done_at)
        us_lists = us.count("list") - lists_before
        window_s = time.monotonic() - t0
    assert max(latencies) < 1.5, f"us detected completions in {latencies} s while eu failed with {fault}"
    assert us_lists >= window_s / 0.1 / 3, f"us sent {us_lists} lists in {window_s:.1f}s at a 0.1 s pace"
    assert not any(r.envelope["data"]["project"] == "eu" for r in receiver.delivered)


async def test_adding_a_project_takes_its_baseline_only_and_removing_one_dead_letters_its_rows(tmp_path, apis, receiver):
    """A project added later takes a baseline (no flood of its history); a removed project's pending deliveries are dead-lettered with a reason."""
    eu, us = apis["eu"], apis["us"]
    for _ in range(3):
        eu.complete_action(eu.add_action("VOUCHERS.IMPORT_CSV"), example="VOUCHERS.IMPORT_CSV")
        us.complete_action(us.add_action("VOUCHERS.IMPORT_CSV"), example="VOUCHERS.IMPORT_CSV")
    async with running(project_settings(tmp_path, apis, receiver, "eu")) as relay:
        await baselines(relay)
    eu_late = eu.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS")
    async with running(project_settings(tmp_path, apis, receiver, "eu", "us")) as relay:
        await baselines(relay)
        assert relay.projects["us"].loop.last_poll.first_run, "us took its own baseline"
        assert not relay.projects["eu"].loop.last_poll.first_run, "eu kept its state"
        eu.complete_action(eu_late, example="VOUCHERS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)
        await receiver.close()  # us's next event cannot be delivered: it stays pending
        us.complete_action(us.add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS"), example="VOUCHERS.IMPORT_CSV")
        await until(lambda: relay.projects["us"].loop.last_poll is not None and relay.projects["us"].loop.last_poll.events != ())
    assert [r.envelope["data"]["id"] for r in receiver.delivered] == [eu_late], "no history of either project was sent"
    async with running(project_settings(tmp_path, apis, receiver, "eu")) as relay:
        await baselines(relay)
    stores = await open_stores(project_settings(tmp_path, apis, receiver, "eu"), mode="ro")
    try:
        dead = await stores.outbox.list(dead=True)
    finally:
        await stores.close()
    assert [(row.project, row.last_error) for row in dead] == [("us", "project us is no longer configured; add it back, then replay")]


async def test_watch_names_the_project_when_there_are_several(tmp_path, apis, receiver):
    """POST /watch needs a project with several configured; an unknown one is refused with the configured names."""
    settings = project_settings(tmp_path, apis, receiver, HTTP_LISTEN="127.0.0.1:0", WATCH_TOKEN=WATCH_TOKEN)
    headers = {"Authorization": f"Bearer {WATCH_TOKEN}"}
    async with running(settings) as relay, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{relay.http_port}/watch"
        answers = []
        for body in ({"action_id": "aa_1"}, {"action_id": "aa_1", "project": "mars"}, {"action_id": "aa_1", "project": "us"}):
            async with http.post(url, json=body, headers=headers) as response:
                answers.append((response.status, (await response.json())["detail"]))
    assert answers[0][0] == 400
    assert "name the project" in answers[0][1]
    assert answers[1] == (400, "no project 'mars' is configured (configured: eu, us)")
    assert answers[2] == (202, "aa_1")


async def test_one_action_id_in_two_projects_is_two_live_slack_messages_each_naming_its_project(tmp_path, apis, receiver):
    """The Slack app sink keeps one message per (project, action): the same id in two projects posts two, and progress updates keep the project."""
    slack = FakeSlackWeb(rates_per_s={"chat.update": 20})
    await slack.start()
    try:
        sink = {"KIND": "slack_app", "TOKEN": BOT_TOKEN, "CHANNEL": CHANNEL, "API_URL": slack.url, "UPDATE_INTERVAL_S": "0.2", "MIN_INTERVAL_S": "0"}
        settings = project_settings(tmp_path, apis, receiver, **{f"SINKS__LIVE__{k}": v for k, v in sink.items()})
        same_id = "aa_0000000000000000shared"
        async with running(settings) as relay:
            await baselines(relay)
            for api in apis.values():
                api.add_action("VOUCHERS.IMPORT_CSV", id=same_id, status="IN_PROGRESS", progress=5)
            await until(lambda: slack.count("chat.postMessage") == 2)
            for progress in (30, 60):
                for api in apis.values():
                    api.update_action(same_id, progress=progress)
                await asyncio.sleep(0.5)
            for api in apis.values():
                api.complete_action(same_id, example="VOUCHERS.IMPORT_CSV")
            await until(lambda: sum(1 for m in slack.top_level() if "100%" in str(m.blocks)) == 2)
        messages = slack.top_level()
        assert len(messages) == 2
        assert sorted(_project_field(m.blocks).rsplit(None, 1)[-1] for m in messages) == ["eu", "us"]
        for message in messages:
            assert all(_project_field(b) for b in message.history), "every version of the message, progress updates included, names its project"
            assert message.updates >= 2
    finally:
        await slack.close()


def _project_field(blocks) -> str:
    """Return the Project field a message shows ('' when none)."""
    fields = [f["text"] for b in blocks for f in b.get("fields", []) if "Project" in f["text"]]
    return fields[0] if fields else ""


async def test_log_lines_name_their_project(tmp_path, apis, receiver):
    """Each project's cycle and lease lines carry its name; a delivery line carries the project of the action it delivers; other lines none."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        async with running(project_settings(tmp_path, apis, receiver)) as relay:
            await baselines(relay)
            action = apis["us"].add_action("VOUCHERS.IMPORT_CSV", status="IN_PROGRESS")
            apis["us"].complete_action(action, example="VOUCHERS.IMPORT_CSV")
            await until(lambda: len(receiver.delivered) == 1)
    cycles = [line for line in lines if line["event"] == "poll.completed"]
    assert {line["project"] for line in cycles} == {"eu", "us"}
    assert {line["project"] for line in lines if line["event"] == "lease.acquired"} == {"eu", "us"}
    (sent,) = [line for line in lines if line["event"] == "delivery.sent"]
    assert sent["project"] == "us"
    assert all("project" not in line for line in lines if line["event"] in ("dispatch.drained", "relay.stopped"))
