"""PURE: the live Slack message's states (daemon/slack_live.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.slack_blocks import validate_message
from daemon.slack_live import progress_bar, render_live_message, state_from_event

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def envelope(event_type: str, **data: object) -> dict[str, object]:
    """Return an event envelope for one customers import."""
    base = {"id": "aa_1", "type": "CUSTOMERS.IMPORT_CSV", "created_at": "2026-11-30T11:58:00.000Z", "project": "eu"}
    return {"type": event_type, "timestamp": "2026-11-30T12:00:00.000Z", "data": base | data}


@pytest.mark.parametrize(
    ("event_type", "data", "header", "percent"),
    [
        ("async_action.started", {"progress": 0}, "Customers CSV import running", "0%"),
        ("async_action.completed", {"progress": 100, "outcome": "success", "done_count": 5}, "Customers CSV import completed", "100%"),
        ("async_action.completed", {"progress": 100, "outcome": "partial"}, "completed with failures", "100%"),
        ("async_action.failed", {"progress": 100, "outcome": "failure"}, "Customers CSV import failed", "100%"),
    ],
)
def test_each_state_renders_within_slacks_limits(event_type, data, header, percent):
    """Start, success, partial and failure each render a header, a bar and its percentage, and pass Slack's limits."""
    message = render_live_message(state_from_event(envelope(event_type, **data), now=NOW))
    assert header in message["blocks"][0]["text"]["text"]
    assert message["text"].endswith(percent)
    assert validate_message(message) == []


def test_the_project_shows_only_when_several_are_watched():
    """A single-project deployment's message names no project; with several, it does."""
    one = render_live_message(state_from_event(envelope("async_action.started"), now=NOW))
    several = render_live_message(state_from_event(envelope("async_action.started"), now=NOW, show_project=True))
    assert "Project" not in str(one["blocks"])
    assert "*Project*\neu" in str(several["blocks"]).replace("\\n", "\n")


@pytest.mark.parametrize(("progress", "filled", "says"), [(0, 0, "0%"), (50, 10, "50%"), (99, 19, "99%"), (100, 20, "100%")])
def test_progress_bar_fills_in_proportion(progress, filled, says):
    """The bar has 20 cells, filled in proportion, with the percentage beside it."""
    bar = progress_bar(progress)
    assert (bar.count("█"), bar.endswith(says)) == (filled, True)


@pytest.mark.parametrize("progress", [None, -5, 250])
def test_a_missing_or_impossible_progress_is_shown_as_unknown(progress):
    """No progress, or one outside 0..100, draws an empty bar saying so rather than a made-up figure."""
    assert progress_bar(progress).endswith("progress unknown")
