"""SlackAppSink: one Slack message per action, posted when it starts and updated in place.

Through the outbox (same retries and dead letters as any event): ``started`` posts the
message (``chat.postMessage``) and persists its channel and ``ts``; ``completed``,
``failed`` and ``stuck`` update it (``chat.update``; a post if there is none yet, e.g. an
action first seen finished), then post the failure rows as one threaded reply. Between
those, :meth:`SlackAppSink.update_progress` is best-effort: at most one ``chat.update``
per message every ``__UPDATE_INTERVAL_S``, within a per-sink token bucket for Slack's
chat.update tier, paused while a 429's Retry-After runs; dropped updates cost nothing,
since the next one shows the latest state. The token never appears in a log or a detail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Delivery, EventType
from daemon.sink_settings import SinkSettings
from daemon.sinks import SendResult
from daemon.sinks.slack_api import MESSAGE_GONE, RATE_LIMITED, TokenBucket, classify_error
from daemon.slack_blocks import render_message
from daemon.slack_live import render_failure_thread, render_live_message, state_from_event, state_from_snapshot
from daemon.store import MessageRef, MessageRefs, message_key

log = structlog.get_logger("daemon.sinks.slack_app")
UPDATES_PER_MINUTE = 50.0  # Slack's tier 3 (chat.update), per workspace: this sink keeps under it alone
MAX_HOLD_S = 10.0


class SlackAppSink:
    """Deliver events to one Slack channel as live messages, through the Web API (slack_sdk)."""

    kind = "slack_app"
    max_concurrency = 1  # one action's started and final must not race; Slack paces posts per channel anyway

    def __init__(
        self,
        name: str,
        settings: SinkSettings,
        session: aiohttp.ClientSession,
        *,
        refs: MessageRefs | None,
        clock: Callable[[], float] = time.time,
        updates_per_minute: float = UPDATES_PER_MINUTE,
        show_project: bool = False,
    ) -> None:
        """``refs`` persists each action's message (None: send-test, which posts only a test message); ``show_project``: several projects."""
        self.name = name
        self._show_project = show_project
        self._channel = settings.channel or ""
        self._display = settings.display_url()
        token = settings.token.get_secret_value() if settings.token else ""
        self._client = AsyncWebClient(token=token, base_url=settings.api_url, session=session, timeout=max(1, round(settings.timeout_s)), retry_handlers=[])
        self._refs = refs
        self._clock = clock
        self._update_interval_s = settings.update_interval_s
        self._post_interval_s = settings.min_interval_s
        self._bucket = TokenBucket(rate_per_s=updates_per_minute / 60, burst=max(1.0, updates_per_minute / 10))
        self._lock = asyncio.Lock()
        self._paused_until = 0.0  # monotonic: a 429's Retry-After
        self._next_post_at = 0.0
        self._pushed: dict[str, tuple[int | None, float]] = {}  # action id -> (progress shown, monotonic time)

    def __repr__(self) -> str:
        """Show the name, API and channel, never the token."""
        return f"SlackAppSink(name={self.name!r}, api={self._display!r})"

    def describe(self) -> str:
        """Return the sink's kind, Web API base and channel."""
        return f"slack_app {self._display}"

    async def send(self, delivery: Delivery) -> SendResult:
        """Post or update the action's message for one event; never raise for Slack or network trouble."""
        async with self._lock:
            held = self._held()
            if held is not None:
                return held
            envelope = delivery.envelope()
            if delivery.event_type == EventType.TEST:
                result, _ = await self._post(render_message(envelope))
                return result
            if self._refs is None:
                return SendResult(delivered=False, status=None, detail="no message store (send-test sends test events only)", permanent=True)
            key = message_key(str(envelope.get("data", {}).get("project") or DEFAULT_PROJECT), delivery.action_id)
            if delivery.event_type == EventType.STARTED:
                return await self._start(key, envelope, self._refs)
            return await self._finish(key, envelope, self._refs)

    async def _start(self, action_id: str, envelope: dict[str, Any], refs: MessageRefs) -> SendResult:
        if await refs.get(self.name, action_id) is not None:  # posted already (a resend, or its end came first)
            return SendResult(delivered=True, status=200, detail="message already posted")
        state = state_from_event(envelope, now=self._now(), show_project=self._show_project)
        result, answer = await self._post(render_live_message(state))
        if answer is not None:
            await refs.put(self.name, action_id, MessageRef(channel=answer["channel"], ts=answer["ts"]), now=self._clock())
            self._pushed[action_id] = (state.progress, time.monotonic())
        return result

    async def _finish(self, action_id: str, envelope: dict[str, Any], refs: MessageRefs) -> SendResult:
        ref = await refs.get(self.name, action_id)
        if ref is None or ref.stage == "live":
            message = render_live_message(state_from_event(envelope, now=self._now(), show_project=self._show_project))
            result, ref = await self._show_final(ref, message)
            if ref is None:
                return result
            await refs.put(self.name, action_id, ref, now=self._clock())
            self._pushed.pop(action_id, None)
        thread = render_failure_thread(envelope)
        if ref.stage == "replied" or thread is None:
            return SendResult(delivered=True, status=200, detail=f"message {ref.ts} shows the end state")
        result, answer = await self._post(thread, thread_ts=ref.ts, channel=ref.channel)
        if answer is not None:
            await refs.put(self.name, action_id, MessageRef(channel=ref.channel, ts=ref.ts, stage="replied"), now=self._clock())
        return result

    async def _show_final(self, ref: MessageRef | None, message: dict[str, Any]) -> tuple[SendResult, MessageRef | None]:
        """Update the live message to its end state, or post it if there is none (or Slack lost it)."""
        if ref is not None:
            result, answer = await self._call("chat_update", channel=ref.channel, ts=ref.ts, **message)
            if answer is not None:
                return result, MessageRef(channel=ref.channel, ts=ref.ts, stage="final")
            if not result.detail.endswith(tuple(MESSAGE_GONE)):
                return result, None
        result, answer = await self._post(message)
        return result, None if answer is None else MessageRef(channel=answer["channel"], ts=answer["ts"], stage="final")

    async def update_progress(self, snapshots: Sequence[ActionSnapshot], *, project: str = DEFAULT_PROJECT) -> int:
        """Best-effort: show new progress on live messages of ``project``'s actions (coalesced, rate-limited); return how many were updated."""
        if self._refs is None:
            return 0
        updated = 0
        for snapshot in snapshots:
            if self._due(message_key(project, snapshot.id), snapshot) and await self._push(snapshot, self._refs, project=project):
                updated += 1
        return updated

    def _due(self, key: str, snapshot: ActionSnapshot) -> bool:
        shown = self._pushed.get(key)
        now = time.monotonic()
        if shown is not None and (shown[0] == snapshot.progress or now - shown[1] < self._update_interval_s):
            return False
        return now >= self._paused_until

    async def _push(self, snapshot: ActionSnapshot, refs: MessageRefs, *, project: str) -> bool:
        key = message_key(project, snapshot.id)
        async with self._lock:
            ref = await refs.get(self.name, key)
            if ref is None or ref.stage != "live" or not self._bucket.take(time.monotonic()):
                return False
            state = state_from_snapshot(snapshot, now=self._now(), project=project if self._show_project else None)
            result, answer = await self._call("chat_update", channel=ref.channel, ts=ref.ts, **render_live_message(state))
            self._pushed[key] = (snapshot.progress if answer is not None else None, time.monotonic())
            if answer is None:
                log.warning("slack_app.progress_dropped", sink=self.name, action_id=snapshot.id, caused_by=result.detail)
            return answer is not None

    async def _post(self, message: dict[str, Any], *, thread_ts: str | None = None, channel: str | None = None) -> tuple[SendResult, dict[str, Any] | None]:
        wait_s = self._next_post_at - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self._next_post_at = time.monotonic() + self._post_interval_s
        fields = {k: v for k, v in message.items() if k in {"text", "blocks"}}
        return await self._call("chat_postMessage", channel=channel or self._channel, thread_ts=thread_ts, unfurl_links=False, unfurl_media=False, **fields)

    async def _call(self, method: str, **kwargs: Any) -> tuple[SendResult, dict[str, Any] | None]:  # noqa: ANN401 - slack_sdk's keyword arguments
        """Call one Web API method; return the classified result and, on success, Slack's answer."""
        self._bucket.take(time.monotonic(), force=method == "chat_update")
        try:
            response = await getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "") if isinstance(exc.response.data, dict) else ""
            result = classify_error(exc.response.status_code, error, exc.response.headers.get("Retry-After"))
            self._hold(result)
            return result, None
        except TimeoutError:
            return SendResult(delivered=False, status=None, detail="timed out"), None
        except (aiohttp.ClientError, SlackClientError) as exc:
            return SendResult(delivered=False, status=None, detail=f"connection failed ({type(exc).__name__})"), None
        return SendResult(delivered=True, status=response.status_code, detail=f"{method.replace('_', '.', 1)} ok"), dict(response.data)

    async def probe(self) -> list[tuple[bool | None, str]]:
        """Check the token (auth.test) and the channel (conversations.info): (ok, what) lines; None: could not tell."""
        result, answer = await self._call("auth_test")
        if answer is None:
            return [(False, f"token: {result.detail}")]
        lines: list[tuple[bool | None, str]] = [(True, f"token: ok (bot {answer.get('user', '?')!s:.40} in workspace {answer.get('team', '?')!s:.60})")]
        result, answer = await self._call("conversations_info", channel=self._channel)
        if answer is None and "missing_scope" in result.detail:
            return [*lines, (None, f"channel {self._channel}: not verified (conversations.info needs channels:read); send-test posts for real")]
        if answer is None:
            return [*lines, (False, f"channel {self._channel}: {result.detail}")]
        channel = answer.get("channel")
        info: dict[str, Any] = channel if isinstance(channel, dict) else {}
        if info.get("is_member") is False:
            return [*lines, (False, f"channel {self._channel}: the bot is not a member: invite it (/invite @your-app)")]
        return [*lines, (True, f"channel {self._channel}: ok (#{info.get('name', '?')!s:.80})")]

    def _hold(self, result: SendResult) -> None:
        if result.status == RATE_LIMITED and result.retry_after_s is not None:
            self._paused_until = max(self._paused_until, time.monotonic() + result.retry_after_s)
            log.warning("slack_app.rate_limited", sink=self.name, retry_after_s=result.retry_after_s)

    def _held(self) -> SendResult | None:
        wait_s = self._paused_until - time.monotonic()
        if wait_s <= 0:
            return None
        return SendResult(delivered=False, status=None, detail=f"held: Slack asked to wait {wait_s:.1f}s more", retry_after_s=wait_s)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=UTC)
