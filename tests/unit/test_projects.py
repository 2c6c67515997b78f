"""Events per project: ``data.project``, ids unique across projects (unchanged for ``default``), routing by project."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.bootstrap import route_event
from daemon.model import event_id_for, in_project
from daemon.normalize import normalize
from daemon.sink_settings import SinkSettings

ACTION = {"id": "aa_0a1b2c3d4e5f", "type": "VOUCHERS.IMPORT_CSV", "status": "DONE", "result": {}}
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_default_project_keeps_the_single_project_event_id():
    """An upgraded single-project relay sends the same webhook-id it always did, now with data.project=default."""
    event = in_project(normalize(ACTION, detected_at=NOW), "default")
    assert event.id == event_id_for(ACTION["id"], event.type)
    assert event.data["project"] == "default"


def test_the_same_action_id_in_two_projects_gets_two_event_ids():
    """Two projects reporting one action id (and type) never share a webhook-id, so receivers deduplicate neither away."""
    base = normalize(ACTION, detected_at=NOW)
    ids = {in_project(base, name).id for name in ("default", "eu", "us")}
    assert len(ids) == 3
    assert in_project(base, "eu").id == in_project(base, "eu").id  # stable: the same event keeps its id


def test_a_sink_filtered_by_project_gets_only_those_projects():
    """RELAY_SINKS__<NAME>__PROJECTS routes each project's events to its sinks; an unfiltered sink gets all."""
    specs = {
        "eu_ops": SinkSettings(kind="webhook", url="https://eu.example.com/in", projects=["eu"]),
        "all": SinkSettings(kind="webhook", url="https://all.example.com/in"),
    }
    base = normalize(ACTION, detected_at=NOW)
    assert route_event(specs, in_project(base, "eu")) == ["eu_ops", "all"]
    assert route_event(specs, in_project(base, "us")) == ["all"]
