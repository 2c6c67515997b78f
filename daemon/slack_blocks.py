"""PURE: render an event envelope as a Slack incoming-webhook message (Block Kit + text).

Slack rejects a message whole when any limit is crossed, and ``msg_blocks_too_long``
comes well before the per-block limits add up, so every piece of user text is escaped
first, then clipped visibly (``…``, ``+N more``), and the total is budgeted.
Lengths are counted in UTF-16 units: never fewer than Slack's count.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from daemon.model import EventType, format_timestamp, parse_timestamp
from daemon.normalize import KNOWN_TYPES

MAX_BLOCKS = 50
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_FIELDS = 10
MAX_FIELD_CHARS = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_CHARS = 2000
MAX_TEXT_CHARS = 3000  # our budget for the fallback ``text``
MAX_BLOCKS_TEXT_CHARS = 7000  # all block text together
MAX_MESSAGE_CHARS = 10000  # blocks + text; Slack's msg_blocks_too_long bites near 12,000

# Per-part budgets: their sum (with the header, fields and context) stays under MAX_BLOCKS_TEXT_CHARS.
ROWS_IN_BLOCKS = 10
ROWS_IN_TEXT = 3
LIST_ITEMS = 5
ROW_CHARS = 280
SHORT_CHARS = 120
MESSAGE_CHARS = 500
FAILURES_CHARS = 2500
ERRORS_CHARS = 1000
REPORTS_CHARS = 1200
TEXT_LIST_CHARS = 900

EMOJI = {"success": ":white_check_mark:", "partial": ":warning:", "failure": ":x:", "stuck": ":hourglass:", "test": ":test_tube:"}
VERB = {"success": "completed", "partial": "completed with failures", "failure": "failed", "stuck": "is stuck"}
# Type codes read as words once the operation is said as a noun: IMPORT_CSV -> "CSV import".
_PHRASES = ((r"\bimport csv$", "CSV import"), (r"\bdelete$", "deletion"), (r"\bgenerate$", "generation"))
_ACRONYMS = {"csv": "CSV", "sku": "SKU", "skus": "SKUs", "id": "ID", "ids": "IDs", "api": "API"}
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")


def render_message(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Return the incoming-webhook payload for ``envelope``, always within Slack's limits."""
    view = _View(envelope)
    message = {"text": render_text(envelope), "blocks": _test_blocks(view) if view.outcome == "test" else _action_blocks(view)}
    if validate_message(message):  # a safety net: a bare header beats a rejected message
        message["blocks"] = [_header(view)]
    return {**message, "unfurl_links": False, "unfurl_media": False}


def render_text(envelope: Mapping[str, Any]) -> str:
    """Return the plain mrkdwn fallback (notifications, and the whole message if blocks are rejected)."""
    view = _View(envelope)
    lines = [_headline(view, markup=True), view.stuck_line(), view.counts_line(), view.message()]
    if view.outcome != "test":
        lines += [*_failure_lines(view.data, ROWS_IN_TEXT, TEXT_LIST_CHARS), *_report_lines(view.data, 2, TEXT_LIST_CHARS), view.ids_line()]
    return clip("\n".join(line for line in lines if line), MAX_TEXT_CHARS, tail="… (truncated)")


def humanize_type(action_type: str) -> str:
    """Name an async action type in words; unknown types keep their code in brackets."""
    words = " ".join(w for w in re.split(r"[^a-z0-9]+", action_type.lower()) if w)
    for pattern, phrase in _PHRASES:
        words = re.sub(pattern, phrase, words)
    words = re.sub(r"\b[a-z]+\b", lambda m: _ACRONYMS.get(m[0], m[0]), words)
    if not words:
        return f"Async action ({action_type})" if action_type.strip() else "Async action"
    words = words[0].upper() + words[1:]
    return words if action_type in KNOWN_TYPES else f"{words} ({action_type})"


def humanize_ms(ms: float) -> str:
    """Say a duration the way a person would: ``755 ms``, ``4.2 s``, ``1h 12m``."""
    if ms < 0 or (isinstance(ms, float) and not math.isfinite(ms)):
        return "unknown"
    if ms < 1000:  # noqa: PLR2004 - a second
        return f"{round(ms)} ms"
    if ms < 60_000:  # noqa: PLR2004 - a minute
        return f"{ms / 1000:.1f} s".replace(".0 s", " s")
    days, rest = divmod(int(ms // 1000), 86400)
    hours, rest = divmod(rest, 3600)
    amounts = [(days, "d"), (hours, "h"), *zip(divmod(rest, 60), "ms", strict=True)]
    first = next(i for i, (n, _) in enumerate(amounts) if n)
    return " ".join(f"{n}{unit}" for n, unit in amounts[first : first + 2] if n)


def escape(text: str) -> str:
    """Escape the three characters mrkdwn treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def size(text: str) -> int:
    """Count ``text`` as the strictest reading of Slack's limits would (UTF-16 units)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clip(text: str, limit: int, *, tail: str = "…") -> str:
    """Cut already-escaped ``text`` to ``limit`` units, visibly, never inside an entity."""
    if size(text) <= limit:
        return text
    room, kept = limit - size(tail), []
    for char in text:
        room -= size(char)
        if room < 0:
            break
        kept.append(char)
    return _PARTIAL_ENTITY.sub("", "".join(kept)) + tail


def validate_message(msg: Mapping[str, Any]) -> list[str]:
    """List every way ``msg`` breaks Slack's limits; ``message:`` ones mean too long overall."""
    text, blocks = msg.get("text"), msg.get("blocks")
    problems = [] if isinstance(text, str) and (text.strip() or blocks) else ["text: missing or empty"]
    if isinstance(text, str) and size(text) > MAX_TEXT_CHARS:
        problems.append(f"text: {size(text)} chars > {MAX_TEXT_CHARS}")
    if blocks is None:
        return problems
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS:
        return [*problems, f"blocks: not a list of 1..{MAX_BLOCKS}"]
    totals = [0]
    for i, block in enumerate(blocks):
        problems += _check_block(f"blocks[{i}]", block, totals)
    if totals[0] > MAX_BLOCKS_TEXT_CHARS:
        problems.append(f"message: blocks hold {totals[0]} chars > {MAX_BLOCKS_TEXT_CHARS}")
    if totals[0] + size(text if isinstance(text, str) else "") > MAX_MESSAGE_CHARS:
        problems.append(f"message: blocks and text hold more than {MAX_MESSAGE_CHARS} chars")
    return problems


def _check_block(where: str, block: object, totals: list[int]) -> list[str]:
    if not isinstance(block, Mapping):
        return [f"{where}: not an object"]
    kind = block.get("type")
    if kind == "header":
        return _check_text(f"{where}.text", block.get("text"), MAX_HEADER_CHARS, totals, kinds=("plain_text",))
    if kind == "section":
        return _check_section(where, block, totals)
    if kind == "context":
        return _check_context(where, block.get("elements"), totals)
    return [] if kind == "divider" else [f"{where}: unknown block type {kind!r}"]


def _check_section(where: str, block: Mapping[str, Any], totals: list[int]) -> list[str]:
    fields = block.get("fields", [])
    found = _check_text(f"{where}.text", block["text"], MAX_SECTION_CHARS, totals) if "text" in block else []
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS or ("text" not in block and not fields):
        return [*found, f"{where}.fields: need text or 1..{MAX_FIELDS} fields"]
    return found + [p for j, f in enumerate(fields) for p in _check_text(f"{where}.fields[{j}]", f, MAX_FIELD_CHARS, totals)]


def _check_context(where: str, elements: object, totals: list[int]) -> list[str]:
    if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS:
        return [f"{where}.elements: need 1..{MAX_CONTEXT_ELEMENTS}"]
    return [p for j, e in enumerate(elements) for p in _check_text(f"{where}.elements[{j}]", e, MAX_CONTEXT_CHARS, totals)]


def _check_text(where: str, obj: object, limit: int, totals: list[int], *, kinds: tuple[str, ...] = ("plain_text", "mrkdwn")) -> list[str]:
    if not isinstance(obj, Mapping) or obj.get("type") not in kinds or not isinstance(obj.get("text"), str):
        return [f"{where}: not a {'/'.join(kinds)} text object"]
    totals[0] += size(obj["text"])
    if not obj["text"].strip():
        return [f"{where}: empty text"]
    return [f"{where}: {size(obj['text'])} chars > {limit}"] if size(obj["text"]) > limit else []


class _View:
    """Read an envelope defensively: any field may be missing or of the wrong type."""

    def __init__(self, envelope: Mapping[str, Any]) -> None:
        envelope = envelope if isinstance(envelope, Mapping) else {}
        data = envelope.get("data")
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        self.event_type = _str(envelope.get("type"))
        self.when = _str(envelope.get("timestamp"))
        self.outcome = self._outcome()
        self.type_words = clip(humanize_type(_str(self.data.get("type")) or "UNKNOWN"), SHORT_CHARS)

    def _outcome(self) -> str:
        if self.event_type == EventType.TEST or self.data.get("test") is True:
            return "test"
        if self.event_type == EventType.STUCK:
            return "stuck"
        outcome = self.data.get("outcome")
        if isinstance(outcome, str) and outcome in VERB:
            return outcome
        return "failure" if self.event_type == EventType.FAILED else "unknown"

    def stuck_line(self) -> str | None:
        if self.outcome != "stuck":
            return None
        stuck_for = _number(self.data.get("stuck_for_s"))
        duration = humanize_ms(stuck_for * 1000) if stuck_for is not None else "a while"
        return f"*Stuck for {clip(duration, SHORT_CHARS)} at {_pct(self.data.get('progress'))}* (status {_short(self.data.get('status'))})"

    def counts_line(self) -> str | None:
        return None if self.outcome == "test" else " · ".join(f"{name}: {value}" for name, value in self.facts())

    def facts(self) -> list[tuple[str, str]]:
        facts = [("Done", _num(self.data.get("done_count"))), ("Failed", _num(self.data.get("failed_count")))]
        duration = _number(self.data.get("processing_time_ms"))
        if duration is not None and duration >= 0:
            facts.append(("Duration", clip(humanize_ms(duration), SHORT_CHARS)))
        label = "Last change" if self.outcome == "stuck" else "Finished"
        return [*facts, (label, _slack_date(_str(self.data.get("updated_at")) or self.when))]

    def message(self) -> str | None:
        text = _str(self.data.get("message"))
        return clip(escape(text), MESSAGE_CHARS) if text and text.strip() else None

    def ids_line(self) -> str:
        unavailable = " · details unavailable" if self.data.get("detail_available") is False else ""
        return f"Action {_code(self.data.get('id'))} · Request {_code(self.data.get('request_id'))}{unavailable}"


def _headline(view: _View, *, markup: bool) -> str:
    if view.outcome == "test":
        return f"{EMOJI['test']} Test message from voucherify-relay"
    words = escape(view.type_words) if markup else view.type_words
    return f"{EMOJI.get(view.outcome, ':grey_question:')} {words} {VERB.get(view.outcome, 'finished')}"


def _header(view: _View) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": clip(_headline(view, markup=False), MAX_HEADER_CHARS), "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION_CHARS)}}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(t, MAX_CONTEXT_CHARS)} for t in texts[:MAX_CONTEXT_ELEMENTS]]}


def _action_blocks(view: _View) -> list[dict[str, Any]]:
    blocks = [_header(view)]
    if view.outcome == "stuck":
        blocks.append(_section(f"{view.stuck_line()}\nStarted {_slack_date(_str(view.data.get('created_at')))}"))
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in view.facts()]})
    listed = [
        view.message(),
        _titled("Failures", _failure_lines(view.data, ROWS_IN_BLOCKS, FAILURES_CHARS)),
        _titled("Errors", _error_lines(view.data)),
        _titled("Reports", _report_lines(view.data, LIST_ITEMS, REPORTS_CHARS)),
    ]
    blocks += [_section(text) for text in listed if text]
    return [*blocks, _context(view.ids_line(), f"Event {_code(view.event_type)}")]


def _test_blocks(view: _View) -> list[dict[str, Any]]:
    intro = "This is a *test* from voucherify-relay to check this Slack sink. Nothing happened in Voucherify."
    quoted = f"\n>{view.message()}" if view.message() else ""
    return [_header(view), _section(intro + quoted), _context(f"Event {_code(view.event_type)} · sent {_slack_date(view.when)}")]


def _titled(title: str, lines: list[str]) -> str | None:
    return f"*{title}*\n" + "\n".join(lines) if lines else None


def _fit(lines: list[str], budget: int, hidden: int) -> list[str]:
    """Keep whole lines while they fit ``budget``; count the rest, with ``hidden``, as ``+N more``."""
    kept, used = [], 0
    for line in lines:
        used += size(line) + 1
        if used > budget:
            break
        kept.append(line)
    hidden += len(lines) - len(kept)
    return [*kept, f"_+{hidden:,} more_"] if hidden > 0 else kept


def _failure_lines(data: Mapping[str, Any], limit: int, budget: int) -> list[str]:
    rows = data.get("failures")
    if not isinstance(rows, list) or not rows:
        return []
    shown = [_failure_row(row) for row in rows[:limit]]
    hidden = len(rows) - len(shown) + max(_int(data.get("failures_omitted")) or 0, 0)
    hidden = max(hidden, (_int(data.get("failed_count")) or 0) - len(shown))
    return _fit(shown, budget, hidden)


def _failure_row(row: object) -> str:
    row = row if isinstance(row, Mapping) else {"reason": row}
    ids = [_code(row.get("code"))] if _str(row.get("code")) else []
    ids += [f"source {_code(row.get('source_id'))}"] if _str(row.get("source_id")) else []
    ids += [f"row {_num(row.get('row'))}"] if _int(row.get("row")) is not None else []
    reason = " ".join((_str(row.get("reason")) or "no reason given").split())
    return clip(f"• {' · '.join(ids) or '(no id)'}: {escape(reason)}", ROW_CHARS)


def _error_lines(data: Mapping[str, Any]) -> list[str]:
    errors = data.get("errors")
    if not isinstance(errors, list):
        return []
    lines = [clip("• " + escape(" ".join(_any_text(e).split())), ROW_CHARS) for e in errors[:LIST_ITEMS]]
    return _fit(lines, ERRORS_CHARS, len(errors) - len(lines))


def _report_lines(data: Mapping[str, Any], limit: int, budget: int) -> list[str]:
    reports = [r for r in data["reports"] if isinstance(r, str)] if isinstance(data.get("reports"), list) else []
    if not reports:
        return []
    until = _str(data.get("reports_available_till"))
    links = [_link(url, f"Report {i}") for i, url in enumerate(reports[:limit], 1)]
    return [f"Available until {_slack_date(until)}" if until else "Expiry not given", *_fit(links, budget - 200, len(reports) - len(links))]


def _link(url: str, label: str) -> str:
    if re.fullmatch(r"https?://[^\s<>|`]{1,250}", url):
        return f"• <{url.replace('&', '&amp;')}|{label}>"
    return clip(f"• {label}: {escape(url)}", ROW_CHARS)


def _slack_date(value: str | None) -> str:
    moment = parse_timestamp(value)
    if moment is None:
        return clip(escape(value), SHORT_CHARS) if value and value.strip() else "unknown"
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{format_timestamp(moment)}>"


def _str(value: object) -> str | None:
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(value: object) -> str:
    return clip(escape(_str(value) or ""), SHORT_CHARS) or "—"


def _code(value: object) -> str:
    text = _short(value).replace("`", "'")
    return f"`{text}`" if text != "—" else text


def _num(value: object) -> str:
    count = _int(value)
    return clip(f"{count:,}", SHORT_CHARS) if count is not None else "—"


def _pct(value: object) -> str:
    progress = _int(value)
    return f"{progress}%" if progress is not None and 0 <= progress <= 100 else "unknown progress"  # noqa: PLR2004


def _any_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)[: ROW_CHARS * 2]


def failure_lines(data: Mapping[str, Any], *, limit: int = ROWS_IN_BLOCKS, budget: int = FAILURES_CHARS) -> list[str]:
    """Return an event's failure rows as escaped mrkdwn lines, clipped, with ``+N more`` for the rest."""
    return _failure_lines(data, limit, budget)


def slack_date(value: str | None) -> str:
    """Return a timestamp as Slack's ``<!date^…>`` (shown in the reader's time zone)."""
    return _slack_date(value)


def code(value: object) -> str:
    """Return ``value`` escaped and clipped as inline code, or an em dash."""
    return _code(value)
