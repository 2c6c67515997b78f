"""Slack rendering: every event becomes a readable message inside Slack's hard limits."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.normalize import describe, normalize
from daemon.slack_blocks import (
    MAX_HEADER_CHARS,
    MAX_TEXT_CHARS,
    clip,
    escape,
    humanize_ms,
    humanize_type,
    render_message,
    render_text,
    size,
    validate_message,
)

EXAMPLES = json.loads((Path(__file__).parents[2] / "daemon" / "demo" / "voucherify_examples.json").read_text())
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EMOJI = {"success": ":white_check_mark:", "partial": ":warning:", "failure": ":x:"}


def envelope_for(action: dict[str, Any]) -> dict[str, Any]:
    """Normalize ``action`` the way the poller does and return the envelope receivers get."""
    return normalize(action, detected_at=NOW).envelope()


def all_text(message: dict[str, Any]) -> str:
    """Return every string a person could see in ``message``, joined."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message)
    return "\n".join(found)


def section_with(message: dict[str, Any], title: str) -> str:
    """Return the text of the section starting with the bold ``title``."""
    return next(b["text"]["text"] for b in message["blocks"] if b["type"] == "section" and b.get("text", {}).get("text", "").startswith(f"*{title}*"))


def big_failure_action(rows: int, *, reason_chars: int) -> dict[str, Any]:
    """Return a finished import with ``rows`` failed rows, each with a long reason."""
    failed = [{"code": f"CODE-{i}", "row": i + 1, "reason": f"row {i}: " + "x" * reason_chars} for i in range(rows)]
    return {
        "id": "aa_big",
        "type": "VOUCHERS.IMPORT_CSV",
        "status": "DONE",
        "result": {"message": "10 imported, many failed", "failed": failed, "done_count": 10, "failed_count": rows},
        "updated_at": "2023-01-20T09:16:50.238Z",
        "processing_time": 4_320_000,
        "request_id": "v-big",
    }


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_every_documented_example_renders_valid_and_says_what_happened(key):
    """Each documented example renders within Slack's limits and names its type, outcome and counts."""
    envelope = envelope_for(EXAMPLES[key])
    data = envelope["data"]
    message = render_message(envelope)
    assert validate_message(message) == []
    assert validate_message({"text": message["text"]}) == []
    assert humanize_type(data["type"]) in message["text"]
    assert message["blocks"][0]["text"]["text"].startswith(EMOJI[data["outcome"]])
    for name in ("done_count", "failed_count"):
        if data[name] is not None:
            assert f"{data[name]:,}" in message["text"]
            assert any(f["text"].endswith(f"\n{data[name]:,}") for f in message["blocks"][1]["fields"])
    assert data["id"] in all_text(message)
    assert data["request_id"] in all_text(message)


@pytest.mark.parametrize(
    ("action_type", "words"),
    [
        ("CUSTOMERS.IMPORT_CSV", "Customers CSV import"),
        ("CAMPAIGN.VOUCHERS_GENERATE", "Campaign vouchers generation"),
        ("CAMPAIGN.VOUCHERS_DELETE", "Campaign vouchers deletion"),
        ("SKUS.IMPORT_CSV", "SKUs CSV import"),
        ("VOUCHERS.METADATA_KEY_PURGE", "Vouchers metadata key purge"),
        ("LOYALTY.BATCH_JOB", "Loyalty batch job (LOYALTY.BATCH_JOB)"),
        ("", "Async action"),
        ("???", "Async action (???)"),
    ],
)
def test_types_read_as_words(action_type, words):
    """Known types read as words; unknown ones keep their code so support can search for it."""
    assert humanize_type(action_type) == words


@pytest.mark.parametrize(
    ("ms", "said"),
    [
        (0, "0 ms"),
        (755, "755 ms"),
        (1000, "1 s"),
        (4200, "4.2 s"),
        (125_000, "2m 5s"),
        (4_320_000, "1h 12m"),
        (3_605_000, "1h"),
        (90_000_000, "1d 1h"),
        (-5, "unknown"),
    ],
)
def test_durations_read_as_a_person_would_say_them(ms, said):
    """Durations use the two largest units that matter."""
    assert humanize_ms(ms) == said


def test_documented_example_message_shape():
    """A failed import shows its failure rows with code and reason, and a Slack date for when it finished."""
    message = render_message(envelope_for(EXAMPLES["VOUCHERS.IMPORT"]))
    failures = section_with(message, "Failures")
    assert "• `PROMO-CODE31`: unit: must be a number" in failures
    assert "more_" not in failures
    assert "<!date^1674206210^{date_short_pretty} {time}|2023-01-20T09:16:50.238Z>" in all_text(message)
    assert "Duration*\n939 ms" in all_text(message)


def test_csv_failures_show_source_and_row():
    """CSV import failures identify the row and the source id."""
    message = render_message(envelope_for(EXAMPLES["CUSTOMERS.IMPORT_CSV"]))
    assert "• source `test-user@voucherify.io` · row 1: acquisition_channel" in section_with(message, "Failures")


def test_bulk_update_reports_show_links_and_expiry():
    """Report links of bulk updates are clickable and their expiry is shown."""
    action = dict(
        EXAMPLES["VOUCHERS.BULK_UPDATE"],
        result={"done_count": 3, "failed_count": 0, "reports": ["https://r.example/a?x=1&y=2"], "reports_available_till": "2024-11-06T08:26:13.304Z"},
    )
    reports = section_with(render_message(envelope_for(action)), "Reports")
    assert "• <https://r.example/a?x=1&amp;y=2|Report 1>" in reports
    assert "Available until <!date^1730881573^" in reports


@pytest.mark.parametrize("data_source", ["normalized", "raw"])
def test_five_thousand_failed_rows_stay_valid_and_say_how_many_more(data_source):
    """5,000 failed rows with 1,500-char reasons give a valid message naming exactly how many rows are not shown."""
    action = big_failure_action(5000, reason_chars=1500)
    envelope = envelope_for(action)
    if data_source == "raw":  # a producer that did not cap the rows
        envelope["data"]["failures"] = [{**row, "reason": "y" * 1500} for row in action["result"]["failed"]]
        envelope["data"]["failures_omitted"] = 0
    message = render_message(envelope)
    assert validate_message(message) == []
    failures = section_with(message, "Failures")
    shown = failures.count("\n• ")
    assert 1 <= shown <= 10
    assert f"_+{5000 - shown:,} more_" in failures
    assert "…" in failures  # the reasons were clipped visibly
    assert "_+4,997 more_" in message["text"]
    assert size(json.dumps(message)) < 12_000


def test_stuck_event_says_how_long_and_how_far():
    """A stuck action says it is stuck, for how long and at what progress."""
    data = describe({"id": "aa_s", "type": "CUSTOMERS.IMPORT_CSV", "status": "IN_PROGRESS", "progress": 40, "created_at": "2023-01-20T07:00:00.000Z"})
    envelope = {"type": "async_action.stuck", "timestamp": "2023-01-20T08:12:00.000Z", "data": {**data, "stuck_for_s": 4320}}
    message = render_message(envelope)
    assert validate_message(message) == []
    assert message["blocks"][0]["text"]["text"] == ":hourglass: Customers CSV import is stuck"
    assert "*Stuck for 1h 12m at 40%* (status IN_PROGRESS)" in message["text"]
    assert "Stuck for 1h 12m at 40%" in message["blocks"][1]["text"]["text"]
    assert "Started <!date^1674198000^" in message["blocks"][1]["text"]["text"]


def test_test_event_is_clearly_a_test():
    """A relay.test event reads as a test, quotes its message, and shows no action facts."""
    message = render_message({"type": "relay.test", "timestamp": "2026-11-23T12:00:00.000Z", "data": {"message": "hello from <ops>", "test": True}})
    assert validate_message(message) == []
    assert message["blocks"][0]["text"]["text"] == ":test_tube: Test message from voucherify-relay"
    assert "*test*" in message["blocks"][1]["text"]["text"]
    assert "hello from &lt;ops&gt;" in message["text"]
    assert "Done" not in all_text(message)


def test_unknown_type_keeps_its_code():
    """An undocumented type is named readably with its code beside it."""
    action = {"id": "aa_u", "type": "LOYALTY.BATCH_JOB", "status": "DONE", "result": {"done_count": 7}}
    message = render_message(envelope_for(action))
    assert validate_message(message) == []
    assert message["blocks"][0]["text"]["text"] == ":white_check_mark: Loyalty batch job (LOYALTY.BATCH_JOB) completed"


def test_user_text_is_escaped_so_it_cannot_mention_or_link():
    """<, > and & in Voucherify's text are escaped, so no @channel, link or markup leaks through."""
    hostile = "<!channel> & <https://evil.example|click>"
    action = {
        "id": "aa_<x>",
        "type": "VOUCHERS.IMPORT",
        "status": "DONE",
        "request_id": "v-&",
        "result": {"message": hostile, "failed": [{"code": "<@U1>", "source_id": "a&b", "reason": hostile}], "done_count": 0},
    }
    message = render_message(envelope_for(action))
    visible = all_text(message)
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in visible
    assert "`&lt;@U1&gt;`" in visible
    assert "`aa_&lt;x&gt;`" in visible
    assert "<!channel>" not in visible
    assert "<@U1>" not in visible
    assert re.search(r"&(?!amp;|lt;|gt;)", visible.replace("&amp;", "")) is None


@pytest.mark.parametrize(
    "envelope",
    [
        {},
        {"type": "async_action.completed"},
        {"type": "async_action.failed", "timestamp": None, "data": None},
        {"type": "async_action.completed", "data": dict.fromkeys(describe({}), None)},
        {"type": "async_action.stuck", "data": {"stuck_for_s": None, "progress": None}},
        {"type": None, "data": {"failures": [None, 3, "text", {}], "errors": [{"k": "v"}, None], "reports": [None, "not a url"]}},
        {"type": "relay.test", "data": {}},
    ],
)
def test_missing_or_null_fields_still_render(envelope):
    """Anything missing or null renders as a valid message with placeholders, never an error."""
    message = render_message(envelope)
    assert validate_message(message) == []
    assert message["text"].strip()


def test_clip_is_visible_and_never_cuts_an_entity():
    """Clipping ends with an ellipsis and never leaves half an escape sequence."""
    clipped = clip(escape("&" * 100), 10)
    assert clipped == "&amp;…"
    assert clip("short", 10) == "short"
    assert size(clip("😀" * 100, 9)) <= 9


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (
            {"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "x" * (MAX_HEADER_CHARS + 1)}}], "text": "t"},
            "blocks[0].text: 151 chars > 150",
        ),
        ({"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}], "text": "t"}, "blocks[0].text: not a plain_text text object"),
        ({"blocks": [{"type": "divider"}] * 51, "text": "t"}, "blocks: not a list of 1..50"),
        ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}], "text": "t"}, "blocks[0].text: 3001 chars > 3000"),
        ({"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x"}] * 11}], "text": "t"}, "blocks[0].fields: need text or 1..10 fields"),
        ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": " "}}], "text": "t"}, "blocks[0].text: empty text"),
        ({"blocks": [{"type": "context", "elements": []}], "text": "t"}, "blocks[0].elements: need 1..10"),
        ({"blocks": [{"type": "image"}], "text": "t"}, "blocks[0]: unknown block type 'image'"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text: 3001 chars > 3000"),
        ({}, "text: missing or empty"),
        ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}] * 3, "text": "t"}, "message: blocks hold 8700 chars > 7000"),
    ],
)
def test_validate_message_names_each_violation(message, problem):
    """The validator names every limit a message breaks."""
    assert problem in validate_message(message)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.builds(lambda char, n: char * n, st.characters(), st.integers(0, 4000)),
    st.sampled_from(["<!channel>", "a & b", "`tick`", "2023-01-20T07:23:44.044Z", "https://r.example/?a=1&b=2", "DONE", "success", "partial", "failure"]),
)
ROWS = st.lists(st.one_of(SCALARS, st.fixed_dictionaries({"code": SCALARS, "source_id": SCALARS, "row": SCALARS, "reason": SCALARS})), max_size=150)
DATA = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(
            ["id", "type", "status", "operation_status", "outcome", "message", "done_count", "failed_count", "failures_omitted", "reports_available_till"],
            SCALARS,
        ),
        **dict.fromkeys(["progress", "created_at", "updated_at", "processing_time_ms", "request_id", "stuck_for_s", "test", "detail_available"], SCALARS),
        "failures": st.one_of(SCALARS, ROWS),
        "errors": st.one_of(SCALARS, st.lists(st.one_of(SCALARS, st.dictionaries(st.text(max_size=5), SCALARS, max_size=3)), max_size=30)),
        "reports": st.one_of(SCALARS, st.lists(SCALARS, max_size=30)),
    },
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    event_type=st.one_of(st.sampled_from(["async_action.completed", "async_action.failed", "async_action.stuck", "relay.test"]), SCALARS),
    timestamp=SCALARS,
    data=DATA,
)
def test_any_data_renders_a_valid_message(event_type, timestamp, data):
    """Whatever strings, numbers or nulls the documented fields hold, the message is valid and its fallback fits."""
    message = render_message({"type": event_type, "timestamp": timestamp, "data": data})
    assert validate_message(message) == []
    assert validate_message({"text": render_text({"type": event_type, "timestamp": timestamp, "data": data})}) == []
