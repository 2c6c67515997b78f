"""SlackWebStandIn: a real aiohttp server answering like Slack's Web API, for the Slack app sink.

The demo (`demo --slack`) shows the live message through it; the tests use it as their Slack.

It checks the bearer token (``invalid_auth``) and the channel (``channel_not_found``,
``not_in_channel``), validates blocks with slack_sdk's Block Kit model classes and our
limits (``invalid_blocks``), enforces a per-method rate (429 ``ratelimited`` with
Retry-After), returns a ``ts`` per message, keeps each message's latest text and blocks,
and records every call. ``fail_next`` scripts an error answer.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from daemon.slack_blocks import validate_message

CHANNEL = "C0LIVE0001"


@dataclass(frozen=True)
class Call:
    """One request the fake answered: the method, its arguments, when, and the answer."""

    method: str
    args: dict[str, Any]
    at: float
    status: int
    answer: dict[str, Any]


@dataclass
class Message:
    """A message as it now stands in the channel."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    updates: int = 0
    history: list[list[dict[str, Any]]] = field(default_factory=list)


class SlackWebStandIn:
    """Slack's Web API: chat.postMessage, chat.update, auth.test, conversations.info."""

    def __init__(
        self,
        *,
        token: str,
        rates_per_s: dict[str, float] | None = None,
        retry_after: str = "1",
        channels: dict[str, bool] | None = None,
        on_call: Callable[[Call], None] | None = None,
    ) -> None:
        """``rates_per_s``: the most calls per second each method accepts (in a 1 s window); ``channels``: id -> bot is a member."""
        self.token = token
        self.on_call = on_call
        self.rates_per_s = rates_per_s or {}
        self.retry_after = retry_after
        self.channels = channels if channels is not None else {CHANNEL: True}
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.problems: list[str] = []
        self._recent: dict[str, deque[float]] = {}
        self._script: deque[tuple[str, str, int]] = deque()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """Listen on a free loopback port; return the API base URL (ending in /api/)."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{port}/api/"
        return self.url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, method: str, error: str, *, status: int = 200) -> None:
        """Answer the next call of ``method`` with ``error`` (and ``status``)."""
        self._script.append((method, error, status))

    def count(self, method: str) -> int:
        """Return how many calls of ``method`` were answered ok."""
        return sum(1 for c in self.calls if c.method == method and c.answer.get("ok"))

    def top_level(self) -> list[Message]:
        """Return the messages that are not thread replies."""
        return [m for m in self.messages.values() if m.thread_ts is None]

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = {**request.query, **await _body(request)}
        status, answer = self._answer(method, args, request.headers.get("Authorization", ""))
        call = Call(method, args, time.monotonic(), status, answer)
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        headers = {"Retry-After": self.retry_after} if status == HTTPStatus.TOO_MANY_REQUESTS else {}
        return web.json_response(answer, status=status, headers=headers)

    def _answer(self, method: str, args: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:  # noqa: PLR0911 - one answer per check, in Slack's order
        if self._script and self._script[0][0] == method:
            _, error, status = self._script.popleft()
            return status, {"ok": False, "error": error}
        if auth != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if self._rate_limited(method):
            return 429, {"ok": False, "error": "ratelimited"}
        if method == "auth.test":
            return 200, {"ok": True, "team": "Fake", "user": "relay-bot", "bot_id": "B0FAKE"}
        channel = str(args.get("channel", ""))
        if channel not in self.channels:
            return 200, {"ok": False, "error": "channel_not_found"}
        if method == "conversations.info":
            return 200, {"ok": True, "channel": {"id": channel, "name": "ops", "is_member": self.channels[channel]}}
        if not self.channels[channel]:
            return 200, {"ok": False, "error": "not_in_channel"}
        return self._chat(method, channel, args)

    def _chat(self, method: str, channel: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        blocks = args.get("blocks") or []
        problems = _check_blocks(blocks) + validate_message({"text": args.get("text"), "blocks": blocks or None})
        if problems:
            self.problems += problems
            return 200, {"ok": False, "error": "invalid_blocks"}
        if method == "chat.postMessage":
            ts = f"1700000000.{next(self._ts):06d}"
            self.messages[ts] = Message(channel, ts, str(args.get("text")), blocks, args.get("thread_ts"), history=[blocks])
            return 200, {"ok": True, "channel": channel, "ts": ts}
        if method == "chat.update":
            message = self.messages.get(str(args.get("ts")))
            if message is None or message.channel != channel:
                return 200, {"ok": False, "error": "message_not_found"}
            message.text, message.blocks, message.updates = str(args.get("text")), blocks, message.updates + 1
            message.history.append(blocks)
            return 200, {"ok": True, "channel": channel, "ts": message.ts}
        return 200, {"ok": False, "error": "unknown_method"}

    def _rate_limited(self, method: str) -> bool:
        rate = self.rates_per_s.get(method)
        if rate is None:
            return False
        now, recent = time.monotonic(), self._recent.setdefault(method, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= rate:
            return True
        recent.append(now)
        return False


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        body = await request.json()
        return {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else {}
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _check_blocks(blocks: object) -> list[str]:
    """Validate each block with slack_sdk's model classes (they know each block's shape and limits)."""
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if not isinstance(blocks, list):
        return ["blocks: not a list"]
    problems = []
    for i, raw in enumerate(blocks):
        try:
            block = Block.parse(raw)
            if block is None:
                problems.append(f"blocks[{i}]: not a block")
            else:
                block.validate_json()
        except (SlackObjectFormationError, TypeError, KeyError) as exc:
            problems.append(f"blocks[{i}]: {exc}")
    return problems
