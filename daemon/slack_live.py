"""PURE: render an action's live Slack message (one message per action, updated in place).

The message shows what a progress screen would: the action's type, its project (when
known), a progress bar and percentage, the time elapsed, and at the end the outcome,
counts and duration. Its end state turns the colour of the outcome (green, amber, red).
Failure rows go in one threaded reply (:func:`render_failure_thread`). Every piece is
escaped and clipped, and the result checked with :func:`daemon.slack_blocks.validate_message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.model import ActionSnapshot, EventType, parse_timestamp
from daemon.slack_blocks import (
    MAX_HEADER_CHARS,
    SHORT_CHARS,
    clip,
    code,
    escape,
    failure_lines,
    humanize_ms,
    humanize_type,
    slack_date,
    validate_message,
)

BAR_CELLS = 20
THREAD_ROWS = 40  # a thread reply holds more rows than the main message would
THREAD_BUDGET = 6000
EMOJI = {"running": ":hourglass_flowing_sand:", "success": ":large_green_circle:", "partial": ":large_orange_circle:", "failure": ":red_circle:"}
EMOJI |= {"stuck": ":hourglass:"}
WORDS = {"running": "running", "success": "completed", "partial": "completed with failures", "failure": "failed", "stuck": "is stuck"}


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the live message shows at one moment; ``outcome`` is ``running`` until the action ends."""

    action_id: str
    action_type: str
    outcome: str
    progress: int | None
    elapsed_s: float | None
    project: str | None = None  # a hook: shown when the relay watches several projects
    done_count: int | None = None
    failed_count: int | None = None
    duration_ms: int | None = None
    started_at: str | None = None


def state_from_snapshot(snapshot: ActionSnapshot, *, now: datetime, project: str | None = None) -> LiveState:
    """Return the running state of an in-flight action as the list showed it (``project``: shown when several are watched)."""
    return LiveState(
        action_id=snapshot.id,
        action_type=snapshot.type,
        outcome="running",
        progress=snapshot.progress,
        elapsed_s=_elapsed(snapshot.created_at, now),
        project=project,
        started_at=snapshot.created_at,
    )


def state_from_event(envelope: Mapping[str, Any], *, now: datetime, show_project: bool = False) -> LiveState:
    """Return the state an event describes: running for ``started``, else its outcome (the project only when several are watched)."""
    data = envelope.get("data")
    data = data if isinstance(data, Mapping) else {}
    outcome = "running" if envelope.get("type") == EventType.STARTED else _outcome(envelope.get("type"), data.get("outcome"))
    return LiveState(
        action_id=_text(data.get("id")) or "",
        action_type=_text(data.get("type")) or "UNKNOWN",
        outcome=outcome,
        progress=_int(data.get("progress")),
        elapsed_s=_elapsed(_text(data.get("created_at")), now),
        project=_text(data.get("project")) if show_project else None,
        done_count=_int(data.get("done_count")),
        failed_count=_int(data.get("failed_count")),
        duration_ms=_int(data.get("processing_time_ms")),
        started_at=_text(data.get("created_at")),
    )


def render_live_message(state: LiveState) -> dict[str, Any]:
    """Return ``text`` and ``blocks`` for ``state``, always within Slack's limits."""
    header = clip(f"{EMOJI.get(state.outcome, ':grey_question:')} {humanize_type(state.action_type)} {WORDS.get(state.outcome, 'finished')}", MAX_HEADER_CHARS)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}]
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": progress_bar(state.progress)}})
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in _facts(state)]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Action {code(state.action_id)} · started {slack_date(state.started_at)}"}]})
    message = {"text": clip(escape(header) + " · " + _percent(state.progress), 300), "blocks": blocks}
    if validate_message(message):  # a safety net: a bare header beats a rejected update
        message["blocks"] = blocks[:1]
    return message


def render_failure_thread(envelope: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the threaded reply listing an event's failure rows, or None when it has none."""
    data = envelope.get("data")
    lines = failure_lines(data, limit=THREAD_ROWS, budget=THREAD_BUDGET) if isinstance(data, Mapping) else []
    if not lines:
        return None
    title = f"*Failed rows* ({len(lines) if not lines[-1].startswith('_+') else 'first ' + str(len(lines) - 1)})"
    body = clip(title + "\n" + "\n".join(lines), 2900)
    return {"text": clip(body, 2900), "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}]}


def progress_bar(progress: int | None) -> str:
    """Draw ``progress`` as a 20-cell bar with its percentage (``unknown`` when Voucherify gave none)."""
    if progress is None or not 0 <= progress <= 100:  # noqa: PLR2004 - a percentage
        return "`" + "░" * BAR_CELLS + "` progress unknown"
    filled = progress * BAR_CELLS // 100
    return "`" + "█" * filled + "░" * (BAR_CELLS - filled) + f"` {progress}%"


def _facts(state: LiveState) -> list[tuple[str, str]]:
    facts = [("Status", WORDS.get(state.outcome, "finished"))]
    if state.project:
        facts.append(("Project", clip(escape(state.project), SHORT_CHARS)))
    if state.outcome == "running" or state.duration_ms is None:
        facts.append(("Elapsed", "—" if state.elapsed_s is None else humanize_ms(state.elapsed_s * 1000)))
    else:
        facts.append(("Duration", humanize_ms(state.duration_ms)))
    if state.outcome not in {"running", "stuck"}:
        facts += [("Done", _count(state.done_count)), ("Failed", _count(state.failed_count))]
    return facts


def _outcome(event_type: object, outcome: object) -> str:
    if event_type == EventType.STUCK:
        return "stuck"
    if isinstance(outcome, str) and outcome in WORDS:
        return outcome
    return "failure" if event_type == EventType.FAILED else "success"


def _percent(progress: int | None) -> str:
    return f"{progress}%" if progress is not None and 0 <= progress <= 100 else "progress unknown"  # noqa: PLR2004


def _elapsed(created_at: str | None, now: datetime) -> float | None:
    started = parse_timestamp(created_at)
    return None if started is None else max(0.0, (now - started).total_seconds())


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
