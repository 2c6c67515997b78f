"""SlackSink: post events to a Slack incoming webhook, paced to Slack's one message a second.

Slack answers with a status and a one-word body; the sink reads them as::

    200 ok                                   delivered
    400 invalid_blocks, invalid_blocks_format,
        invalid_payload, msg_blocks_too_long our bug: resend once as plain text, log loudly
    400 anything else                        permanent (retrying sends the same bytes)
    403 invalid_token, action_prohibited...  permanent: the webhook's configuration
    404 channel_not_found, no_service, ...   permanent
    410 channel_is_archived, team_disabled   gone (and permanent): nothing will reach it
    429 rate_limited + Retry-After           retry after it; the whole sink holds until then
    3xx                                      retry: never followed (the URL must be Slack's own)
    408, 5xx, timeouts, connection errors    retry

The webhook URL is the credential: it never appears in a log line, a detail or a repr.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from daemon.constants import USER_AGENT
from daemon.httpio import read_at_most
from daemon.sinks import ANSWER_BYTES, MAX_RETRY_AFTER_S, SendResult, parse_retry_after, redirect_result
from daemon.slack_blocks import render_message

if TYPE_CHECKING:
    from daemon.model import Delivery
    from daemon.sink_settings import SinkSettings

log = structlog.get_logger("daemon.sinks.slack")
BLOCK_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "invalid_payload", "msg_blocks_too_long"})
RATE_LIMITED, GONE, TIMEOUT = 429, 410, 408
DEFAULT_RETRY_AFTER_S = 1.0  # Slack's documented rate for incoming webhooks
BODY_CHARS = 100


class SlackSink:
    """Deliver events to one Slack incoming webhook, one message at a time."""

    kind = "slack"
    max_concurrency = 1  # Slack allows about one message a second per webhook: sending in parallel only earns 429s

    def __init__(self, name: str, settings: SinkSettings, session: aiohttp.ClientSession, *, min_interval_s: float = 1.0, max_hold_s: float = 10.0) -> None:
        """Pace sends ``min_interval_s`` apart; a Retry-After hold longer than ``max_hold_s`` defers instead of sleeping."""
        self.name = name
        self._url = settings.target_url()
        self._display = settings.display_url()
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session = session
        self._min_interval_s = min_interval_s
        self._max_hold_s = max(max_hold_s, min_interval_s)
        self._lock = asyncio.Lock()
        self._next_at = 0.0

    def __repr__(self) -> str:
        """Show the name and the redacted URL, never the webhook's secret path."""
        return f"SlackSink(name={self.name!r}, url={self._display!r})"

    def describe(self) -> str:
        """Return the sink's kind and redacted URL."""
        return f"slack {self._display}"

    async def send(self, delivery: Delivery) -> SendResult:
        """Post one event as Block Kit, falling back once to plain text if Slack rejects the blocks."""
        async with self._lock:
            held = await self._wait_turn()
            if held is not None:
                return held
            message = render_message(delivery.envelope())
            result, answer = await self._post(message)
            if result.status != 400 or answer not in BLOCK_ERRORS:  # noqa: PLR2004 - Bad Request
                return result
            log.error("slack.blocks_rejected", sink=self.name, event_id=delivery.event_id, answer=answer, hint="a rendering bug: sending plain text instead")
            await self._wait_turn(force=True)
            result, _ = await self._post({"text": message["text"]})
            return _fallback_result(result, answer)

    async def _wait_turn(self, *, force: bool = False) -> SendResult | None:
        """Sleep until Slack may take the next message; a long Retry-After hold returns instead."""
        wait_s = self._next_at - time.monotonic()
        if wait_s > self._max_hold_s and not force:
            return SendResult(delivered=False, status=None, detail=f"held: Slack asked to wait {wait_s:.1f}s more", retry_after_s=wait_s)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        return None

    async def _post(self, message: dict[str, Any]) -> tuple[SendResult, str]:
        """POST ``message``; return the classified result and Slack's one-word answer."""
        headers = {"User-Agent": USER_AGENT}
        try:
            async with self._session.post(self._url, json=message, headers=headers, timeout=self._timeout, allow_redirects=False) as response:
                answer = (await read_at_most(response, ANSWER_BYTES))[0][:BODY_CHARS].decode("utf-8", "replace").strip()
                if 300 <= response.status < 400:  # noqa: PLR2004
                    result = redirect_result(status=response.status, sink_url=self._url, location=response.headers.get("Location"))
                else:
                    result = classify_answer(response.status, answer, response.headers.get("Retry-After"))
        except TimeoutError:
            result, answer = SendResult(delivered=False, status=None, detail=f"timed out after {self._timeout.total:g}s"), ""
        except aiohttp.ClientError as exc:
            result, answer = SendResult(delivered=False, status=None, detail=f"connection failed ({type(exc).__name__})"), ""
        self._hold(result)
        return replace(result, detail=result.detail.replace(self._url, self._display)), answer

    def _hold(self, result: SendResult) -> None:
        """Schedule the next send: the pacing interval, or Slack's Retry-After when it is longer."""
        now = time.monotonic()
        self._next_at = max(self._next_at, now + self._min_interval_s)
        if result.status == RATE_LIMITED and result.retry_after_s is not None:
            self._next_at = max(self._next_at, now + result.retry_after_s)
            log.warning("slack.rate_limited", sink=self.name, retry_after_s=result.retry_after_s)


def classify_answer(status: int, answer: str, retry_after: str | None) -> SendResult:
    """Map Slack's status and one-word body to what the dispatcher should do."""
    detail = f"HTTP {status}: {_printable(answer) or 'no body'}"
    if 200 <= status < 300:  # noqa: PLR2004
        return SendResult(delivered=True, status=status, detail=detail)
    if status == RATE_LIMITED:
        asked_s = parse_retry_after(retry_after)
        wait_s = min(DEFAULT_RETRY_AFTER_S if asked_s is None else asked_s, MAX_RETRY_AFTER_S)
        return SendResult(delivered=False, status=status, detail=detail, retry_after_s=wait_s)
    if status == GONE:
        return SendResult(delivered=False, status=status, detail=detail, gone=True, permanent=True)
    if 400 <= status < 500 and status != TIMEOUT:  # noqa: PLR2004
        return SendResult(delivered=False, status=status, detail=detail, permanent=True)
    return SendResult(delivered=False, status=status, detail=detail)


def _fallback_result(result: SendResult, answer: str) -> SendResult:
    """Say in the detail that the plain-text fallback was sent (a 400 to it is permanent already)."""
    return replace(result, detail=f"{result.detail} (plain-text fallback after {answer})")


def _printable(answer: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in answer)[:BODY_CHARS]
