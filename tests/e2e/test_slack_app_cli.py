"""`check` and `send-test` cover the Slack app sink: the token, the channel, a real post."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import APP_TOKEN, relay_env
from tests.fakes.slack_web import BOT_TOKEN, CHANNEL, FakeSlackWeb


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlackWeb]:
    """Run a Slack Web API stand-in where the bot is in CHANNEL and not in C0OTHER01."""
    fake = FakeSlackWeb(channels={CHANNEL: True, "C0OTHER01": False})
    await fake.start()
    yield fake
    await fake.close()


def app_env(tmp_path, standin, receiver, slack: FakeSlackWeb, *, channel: str = CHANNEL, token: str = BOT_TOKEN) -> dict[str, str]:
    """Return a CLI environment with one Slack app sink (the token from a file) and no webhook sink."""
    token_file = tmp_path / "slack-token"
    token_file.write_text(token + "\n", encoding="utf-8")
    env = relay_env(tmp_path, standin, receiver)
    del env["RELAY_WEBHOOK_URL"], env["RELAY_WEBHOOK_SECRET"]
    sink = {"KIND": "slack_app", "TOKEN_FILE": str(token_file), "CHANNEL": channel, "API_URL": slack.url}
    return env | {f"RELAY_SINKS__LIVE__{k}": v for k, v in sink.items()}


async def test_check_asks_slack_about_the_token_and_the_channel(run_cli, tmp_path, standin, receiver, slack):
    """`check` says the token and channel are fine, exits 78 naming the fix for a bot outside the channel or a bad token."""
    code, out, err = await run_cli("check", env=app_env(tmp_path, standin, receiver, slack))
    assert code == 0, out + err
    assert "sink live: ok: token: ok" in out
    assert f"sink live: ok: channel {CHANNEL}: ok" in out
    code, out, _ = await run_cli("check", env=app_env(tmp_path, standin, receiver, slack, channel="C0OTHER01"))
    assert code == 78
    assert "/invite" in out
    code, out, _ = await run_cli("check", env=app_env(tmp_path, standin, receiver, slack, token="xoxb-1-2-wrongwrongwrong"))
    assert code == 78
    assert "invalid_auth" in out
    assert "__TOKEN" in out
    assert [c.method for c in slack.calls].count("auth.test") == 3
    assert BOT_TOKEN not in out + err
    assert APP_TOKEN not in out + err


async def test_send_test_posts_a_test_message_through_the_app(run_cli, tmp_path, standin, receiver, slack):
    """`send-test` posts a marked test message with chat.postMessage and reports Slack's answer; a bad channel fails with a hint."""
    code, out, err = await run_cli("send-test", env=app_env(tmp_path, standin, receiver, slack))
    assert code == 0, out + err
    assert "sink live (slack_app" in out
    [message] = slack.top_level()
    assert "test" in message.text.lower()
    assert not slack.problems
    slack.fail_next("chat.postMessage", "not_in_channel")
    code, out, _ = await run_cli("send-test", env=app_env(tmp_path, standin, receiver, slack))
    assert code == 1
    assert "not_in_channel" in out
    assert "/invite" in out
    assert BOT_TOKEN not in out + err
