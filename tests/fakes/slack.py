"""FakeSlack: a real aiohttp server answering like a Slack incoming webhook, limits and pace included.

Slack answers with a status and a one-word plain-text body (api.slack.com changelog
2016-05-17, "Handling errors" in the incoming-webhooks docs); the fake uses the same pairs:

    200 ok
    400 invalid_payload (not JSON), invalid_blocks (a block breaks a limit),
        msg_blocks_too_long (the message is too long in total)
    403 invalid_token, action_prohibited
    404 channel_not_found, no_service (also for an unknown hook path), no_team
    410 channel_is_archived, team_disabled
    429 rate_limited, with Retry-After (a message less than ``min_interval_s`` after the last accepted one)
    500 rollup_error
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from daemon.slack_blocks import validate_message

HOOK_PATH = "/services/T0FAKE000/B0FAKE000/s3cretHookToken0123456789"
SLACK_ERRORS = {
    "invalid_payload": 400,
    "invalid_blocks": 400,
    "invalid_blocks_format": 400,
    "msg_blocks_too_long": 400,
    "invalid_token": 403,
    "action_prohibited": 403,
    "channel_not_found": 404,
    "no_service": 404,
    "no_team": 404,
    "channel_is_archived": 410,
    "team_disabled": 410,
    "rate_limited": 429,
    "rollup_error": 500,
}


@dataclass(frozen=True)
class Answer:
    """One request the fake answered: when (monotonic seconds), how, and what it carried."""

    at: float
    status: int
    body: str
    payload: Any


class FakeSlack:
    """A Slack incoming webhook: validates, paces, records, and fails on cue."""

    def __init__(self, *, min_interval_s: float = 1.0, retry_after: str = "1") -> None:
        """Accept at most one message per ``min_interval_s``; answer 429 with ``retry_after`` otherwise.

        ``delay_s`` (an attribute) delays every answer, to provoke client timeouts.
        """
        self.min_interval_s = min_interval_s
        self.retry_after = retry_after
        self.messages: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self.problems: list[str] = []
        self._script: deque[tuple[int, str, str | None]] = deque()
        self._last_accepted: float | None = None
        self._runner: web.AppRunner | None = None
        self.delay_s = 0.0
        self.url = ""

    async def start(self) -> str:
        """Listen on a free loopback port; return the webhook URL (its path is the secret)."""
        app = web.Application()
        app.router.add_post(HOOK_PATH, self._handle)
        app.router.add_route("*", "/{tail:.*}", self._unknown_hook)
        self._runner = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}{HOOK_PATH}"
        return self.url

    async def close(self) -> None:
        """Stop listening (again is fine)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(self, error: str, *, times: int = 1, status: int | None = None, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with Slack's ``error``, at its documented status unless given."""
        for _ in range(times):
            self._script.append((status or SLACK_ERRORS[error], error, retry_after))

    def statuses(self) -> list[int]:
        """Return the status of every answer, in order."""
        return [a.status for a in self.answers]

    async def _handle(self, request: web.Request) -> web.Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return self._answer(400, "invalid_payload", None)
        if not isinstance(payload, dict):
            return self._answer(400, "invalid_payload", payload)
        if self._script:
            status, body, retry_after = self._script.popleft()
            return self._answer(status, body, payload, retry_after=retry_after)
        return self._judge(payload)

    def _judge(self, payload: dict[str, Any]) -> web.Response:
        problems = validate_message(payload)
        if problems:
            self.problems.extend(problems)
            too_long = any(p.startswith("message:") for p in problems)
            return self._answer(400, "msg_blocks_too_long" if too_long else "invalid_blocks", payload)
        now = time.monotonic()
        if self._last_accepted is not None and now - self._last_accepted < self.min_interval_s:
            return self._answer(429, "rate_limited", payload, retry_after=self.retry_after)
        self._last_accepted = now
        self.messages.append(payload)
        return self._answer(200, "ok", payload)

    async def _unknown_hook(self, _request: web.Request) -> web.Response:
        return self._answer(404, "no_service", None)

    def _answer(self, status: int, body: str, payload: Any, *, retry_after: str | None = None) -> web.Response:
        self.answers.append(Answer(at=time.monotonic(), status=status, body=body, payload=payload))
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return web.Response(status=status, text=body, headers=headers)
