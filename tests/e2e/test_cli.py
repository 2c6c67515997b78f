"""The real command line: exit codes, messages, check, outbox, demo."""

from __future__ import annotations

import json
import time

import pytest

from daemon.arrivals import History, to_text
from daemon.model import Event
from daemon.poll_loop import PACING_HISTORY
from daemon.store import AttemptResults, CycleResult
from daemon.store.sqlite import open_sqlite
from tests.conftest import APP_TOKEN, WEBHOOK_SECRET, relay_env

BASE = {"RELAY_VOUCHERIFY_APP_ID": "app", "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN, "RELAY_WEBHOOK_URL": "https://hooks.example.com/in"}

OPS_SINK = {"RELAY_SINKS__OPS__KIND": "webhook", "RELAY_SINKS__OPS__URL": "https://ops.example.com/in"}


# The exhaustive table of bad environments is tests/unit/test_settings.py (in-process, every
# setting); these few prove the exit-78 path end to end: required, malformed, nested, _FILE, secret.
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RELAY_VOUCHERIFY_APP_ID": ""}, "RELAY_VOUCHERIFY_APP_ID"),
        ({"RELAY_POLL_INTERVAL": "soon"}, "RELAY_POLL_INTERVAL"),
        ({"RELAY_WEBHOOK_SECRET": "not-a-secret"}, "RELAY_WEBHOOK_SECRET"),
        ({"RELAY_SINKS__OPS__KIND": "webhook"}, "RELAY_SINKS__OPS__URL"),
        ({"RELAY_VOUCHERIFY_APP_TOKEN_FILE": "/nonexistent/token"}, "RELAY_VOUCHERIFY_APP_TOKEN_FILE"),
        ({"RELAY_PROJECTS__DEFAULT__APP_ID": "other", "RELAY_PROJECTS__DEFAULT__APP_TOKEN": APP_TOKEN}, "RELAY_PROJECTS__DEFAULT__APP_ID"),
        ({**OPS_SINK, "RELAY_SINKS__OPS__PROJECTS": "eu"}, "RELAY_SINKS__OPS__PROJECTS"),
        ({"RELAY_PROJECTS__EU__APP_ID": "eu-app"}, "RELAY_PROJECTS__EU__APP_TOKEN"),
        (
            {"RELAY_PROJECTS__EU__APP_ID": "eu-app", "RELAY_PROJECTS__EU__APP_TOKEN": APP_TOKEN, "RELAY_PROJECTS__EU__POLL_INTERVAL": "0"},
            "RELAY_PROJECTS__EU__POLL_INTERVAL",
        ),
    ],
)
async def test_bad_configuration_exits_78_naming_the_variable(run_cli, env, variable):
    """Every bad variable ends in exit 78 and one line naming it, without a traceback or a secret."""
    code, out, err = await run_cli("run", env={**BASE, **env})
    assert code == 78
    assert variable in err
    assert "Traceback" not in err + out
    assert APP_TOKEN not in err + out
    assert len(err.strip().splitlines()) == 1


async def test_secrets_can_come_from_files(run_cli, tmp_path, standin):
    """RELAY_VOUCHERIFY_APP_TOKEN_FILE is read (systemd credentials, Docker secrets)."""
    token_file = tmp_path / "token"
    token_file.write_text(APP_TOKEN + "\n")
    env = {**BASE, "RELAY_VOUCHERIFY_APP_ID": "app-123", "RELAY_VOUCHERIFY_API_URL": standin.base_url}
    del env["RELAY_VOUCHERIFY_APP_TOKEN"]
    code, out, _ = await run_cli("check", env={**env, "RELAY_VOUCHERIFY_APP_TOKEN_FILE": str(token_file)})
    assert code == 0, out
    assert "accepted the keys" in out


async def test_check_says_plainly_when_keys_are_wrong(run_cli, standin):
    """`check` with a wrong token exits 78 (a configuration error) naming the two variables to fix."""
    env = {**BASE, "RELAY_VOUCHERIFY_APP_ID": "app-123", "RELAY_VOUCHERIFY_API_URL": standin.base_url, "RELAY_VOUCHERIFY_APP_TOKEN": "wrong-token-123"}
    code, out, err = await run_cli("check", env=env)
    assert code == 78
    assert "credentials refused" in out
    assert "RELAY_VOUCHERIFY_APP_ID and RELAY_VOUCHERIFY_APP_TOKEN" in out
    assert "wrong-token-123" not in out + err
    assert standin.count("list") == 1


async def test_check_prints_what_progress_pacing_learned_and_the_idle_interval_it_gives(run_cli, tmp_path, standin, receiver):
    """`check` reads the learned arrival rate kept with the state and prints the idle interval and detection time it gives now."""
    env = relay_env(tmp_path, standin, receiver, idle_poll_interval="300")
    stores = open_sqlite(tmp_path / "state.db")
    await stores.actions.save_meta("schema_probe", "1")  # the state exists, nothing learned yet
    await stores.close()
    code, out, _ = await run_cli("check", env=env)
    assert code == 0, out
    assert "pacing: nothing learned yet" in out
    now = time.time()
    day = History(since=now - 86400, created=tuple(now - i * 1800 for i in range(48)), durations_s=(120.0,) * 10)  # two an hour
    stores = open_sqlite(tmp_path / "state.db")
    await stores.actions.save_meta(PACING_HISTORY, to_text(day))
    await stores.close()
    code, out, _ = await run_cli("check", env=env)
    assert code == 0, out
    idle_s = 300 * (0.5 / ((48 + 1) / 26)) ** 0.5  # the square-root law at (48 + the prior's 1) arrivals over 26 h
    line = next(line for line in out.splitlines() if line.startswith("pacing: learned"))
    assert "learned 1.9 new actions an hour" in line
    assert "most finishing within 120s" in line
    assert f"idle poll every {idle_s:.0f}s now" in line
    assert f"noticed {idle_s / 2:.0f}s after it starts on average" in line


async def test_outbox_list_and_replay(run_cli, tmp_path, standin, receiver):
    """Dead letters are listed and `outbox replay --dead` makes them due again."""
    env = relay_env(tmp_path, standin, receiver)
    stores = open_sqlite(tmp_path / "state.db")
    event = Event(id="evt_1", type="async_action.failed", timestamp="2026-01-01T00:00:00.000Z", data={"id": "aa_1"})
    await stores.actions.commit_cycle(CycleResult(snapshots=[], events=[(event, ["webhook"])]), now=1.0)
    [delivery] = await stores.outbox.claim_due(now=2.0, limit=10)
    await stores.outbox.apply_results(AttemptResults(dead=[(delivery.row_id, "HTTP 410: endpoint gone")]), now=2.0)
    await stores.close()
    code, out, _ = await run_cli("outbox", "list", "--dead", env=env)
    assert code == 0
    assert "aa_1" in out
    assert "HTTP 410" in out
    code, out, _ = await run_cli("outbox", "list", "--dead", "--json", env=env)
    assert json.loads(out.splitlines()[0])["event_id"] == "evt_1"
    code, out, _ = await run_cli("outbox", "replay", "--dead", env=env)
    assert (code, out.split()[0]) == (0, "1")
    code, out, _ = await run_cli("outbox", "list", env=env)
    assert "aa_1" in out
    code, _, err = await run_cli("outbox", "replay", "999", env=env)
    assert code == 1
    assert "999" in err


async def test_outbox_list_and_replay_by_project(run_cli, tmp_path, standin, receiver):
    """`outbox list` shows each row's project and filters by --project; `outbox replay --dead --project` replays only that project's."""
    env = relay_env(tmp_path, standin, receiver)
    stores = open_sqlite(tmp_path / "state.db")
    for project in ("eu", "us"):
        event = Event(id=f"evt_{project}", type="async_action.failed", timestamp="2026-01-01T00:00:00.000Z", data={"id": f"aa_{project}"})
        await stores.for_project(project).actions.commit_cycle(CycleResult(snapshots=[], events=[(event, ["webhook"])]), now=1.0)
    assert await stores.outbox.dead_letter_unknown_projects(["default"]) == 2
    await stores.close()
    code, out, _ = await run_cli("outbox", "list", "--dead", env=env)
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["us", "eu"], "the PROJECT column"
    code, out, _ = await run_cli("outbox", "list", "--dead", "--project", "eu", "--json", env=env)
    assert [json.loads(line)["project"] for line in out.splitlines()] == ["eu"]
    code, out, _ = await run_cli("outbox", "replay", "--dead", "--project", "us", env=env)
    assert (code, out.split()[0]) == (0, "1")
    code, out, _ = await run_cli("outbox", "list", "--dead", env=env)
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["eu"]


async def test_check_names_the_project_in_every_line_and_exits_78_for_refused_keys(run_cli, tmp_path, standin):
    """With two projects, `check` probes each with its own keys, names the project on its lines and names the refused project's variables."""
    env = {
        "RELAY_WEBHOOK_URL": "https://hooks.example.com/in",
        "RELAY_STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "RELAY_PROJECTS__EU__APP_ID": "app-123",
        "RELAY_PROJECTS__EU__APP_TOKEN": APP_TOKEN,
        "RELAY_PROJECTS__EU__API_URL": standin.base_url,
        "RELAY_PROJECTS__US__APP_ID": "app-us",
        "RELAY_PROJECTS__US__APP_TOKEN": "tok_us_wrong_0123456789",
        "RELAY_PROJECTS__US__API_URL": standin.base_url,
        "RELAY_PROJECTS__US__API_BUDGET_PER_HOUR": "80",
    }
    code, out, err = await run_cli("check", env=env)
    assert code == 78, out + err
    assert "2 projects: eu, us" in out
    assert "voucherify (project eu): ok" in out
    assert "voucherify (project us): FAILED: credentials refused" in out
    assert "RELAY_PROJECTS__US__APP_ID and RELAY_PROJECTS__US__APP_TOKEN" in out
    assert "budget (project us): at most 80 requests" in out
    assert "cost (project eu):" in out
    assert "tok_us_wrong_0123456789" not in out + err


async def test_demo_runs_on_embedded_defaults(run_cli):
    """`demo` needs no configuration, shows the events and exits 0."""
    code, out, err = await run_cli("demo", env={}, timeout_s=60)
    assert code == 0, out + err
    assert "4 event(s) received, 0 bad signature(s)" in out
    assert "CUSTOMERS.IMPORT_CSV" in out
    assert WEBHOOK_SECRET not in out + err


async def test_demo_slack_shows_each_action_as_one_live_message(run_cli):
    """`demo --slack` posts each action's live message once, updates it in place and threads the failure rows."""
    code, out, err = await run_cli("demo", "--slack", env={}, timeout_s=60)
    assert code == 0, out + err
    assert out.count("chat.postMessage (the message appears)") == 4, "one message per action"
    finals = [line for line in out.splitlines() if "chat.update (the same message, updated)" in line and "100%" in line]
    assert len(finals) == 4, "each message ends in its outcome"
    assert out.count("chat.postMessage (thread reply)") == 2, "the two actions with failed rows get one reply each"
    assert "xoxb-demo-" not in out + err, "the demo's bot token is never shown"


async def test_send_test_reports_each_sinks_answer(run_cli, receiver):
    """`send-test` sends a marked sample through every sink and says what each receiver answered."""
    from tests.fakes.slack import FakeSlack  # noqa: PLC0415

    slack = FakeSlack(min_interval_s=0)
    await slack.start()
    try:
        env = {"RELAY_WEBHOOK_URL": receiver.url, "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RELAY_SLACK_WEBHOOK_URL": slack.url}
        code, out, err = await run_cli("send-test", env=env)
        assert code == 0, out + err
        assert "sink webhook" in out
        assert "sink slack" in out
        assert receiver.delivered[0].envelope["type"] == "relay.test"
        assert "test" in slack.messages[0]["text"].lower()
        assert slack.url not in out + err
        slack.fail_next("channel_not_found")
        code, out, _ = await run_cli("send-test", "--sink", "slack", env=env)
        assert code == 1
        assert "channel_not_found" in out
        assert "check the URL" in out
        assert len(receiver.delivered) == 1, "--sink slack sends to Slack only"
    finally:
        await slack.close()
