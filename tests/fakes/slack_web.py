"""The Slack Web API stand-in with the tests' bot token (the class lives in the demo's room)."""

from __future__ import annotations

from typing import Any

from daemon.demo.slack_web import CHANNEL, Call, Message, SlackWebStandIn

BOT_TOKEN = "xoxb-0000000000-1111111111-fAk3B0tT0k3nS3cr3tValue"
__all__ = ["BOT_TOKEN", "CHANNEL", "Call", "FakeSlackWeb", "Message"]


class FakeSlackWeb(SlackWebStandIn):
    """SlackWebStandIn answering to the tests' bot token."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(token=BOT_TOKEN, **kwargs)
