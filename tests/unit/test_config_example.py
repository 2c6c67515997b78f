"""config/relay.env.example documents every setting, and the defaults it shows are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.projects import ProjectSpec
from daemon.settings import RelaySettings, load_settings
from daemon.sink_settings import SinkSettings

EXAMPLE = Path(__file__).parents[2] / "config" / "relay.env.example"
TEXT = EXAMPLE.read_text(encoding="utf-8")
SHOWN_DEFAULT = re.compile(r"^#(RELAY_[A-Z0-9_]+)=(.*)$", re.MULTILINE)
TOP_LEVEL = sorted(name for name in RelaySettings.model_fields if name not in {"sinks", "projects"})


@pytest.mark.parametrize("field", TOP_LEVEL)
def test_every_setting_is_in_the_example(field):
    """Each RelaySettings field appears as RELAY_<FIELD>=, so a new setting without documentation fails here."""
    assert re.search(rf"^#?RELAY_{field.upper()}=", TEXT, re.MULTILINE), f"add RELAY_{field.upper()} to {EXAMPLE.name}"


@pytest.mark.parametrize("field", sorted(SinkSettings.model_fields))
def test_every_sink_field_is_in_the_example(field):
    """Each named-sink field appears as RELAY_SINKS__<NAME>__<FIELD>= in the example."""
    assert re.search(rf"^#?RELAY_SINKS__OPS__{field.upper()}=", TEXT, re.MULTILINE), f"add RELAY_SINKS__OPS__{field.upper()} to {EXAMPLE.name}"


@pytest.mark.parametrize("field", sorted(ProjectSpec.model_fields))
def test_every_project_field_is_in_the_example(field):
    """Each project field appears as RELAY_PROJECTS__<NAME>__<FIELD>= in the example."""
    assert re.search(rf"^#?RELAY_PROJECTS__EU__{field.upper()}=", TEXT, re.MULTILINE), f"add RELAY_PROJECTS__EU__{field.upper()} to {EXAMPLE.name}"


def shown_defaults() -> list[tuple[str, str]]:
    """Return (field, value) for each commented-out line showing a top-level default."""
    found = []
    for variable, value in SHOWN_DEFAULT.findall(TEXT):
        field = variable.removeprefix("RELAY_").lower()
        spec = RelaySettings.model_fields.get(field)
        if spec is not None and spec.default is not None and spec.default_factory is None:  # a computed default (the replica id) is described, not shown
            found.append((field, value))
    return found


@pytest.mark.parametrize(("field", "value"), shown_defaults())
def test_shown_defaults_are_the_real_defaults(field, value, tmp_path):
    """A "#RELAY_X=value" line shows the default: setting that value changes nothing."""
    env = {"RELAY_ENV_FILE": str(tmp_path / "absent.env"), f"RELAY_{field.upper()}": value}
    if field == "poll_interval":
        env["RELAY_IDLE_POLL_INTERVAL"] = "300"  # the idle pace may not be faster than the busy one
    settings = load_settings(env, require_api=False, require_sink=False)
    unset = load_settings({"RELAY_ENV_FILE": env["RELAY_ENV_FILE"]}, require_api=False, require_sink=False)
    assert getattr(settings, field) == getattr(unset, field)  # (the default as loaded: RELAY_POLL_INTERVAL's depends on RELAY_PACING)


def test_every_field_with_a_default_shows_it():
    """Each setting that has a default shows it, so operators need not read the code."""
    shown = {field for field, _ in shown_defaults()}
    with_default = {name for name, info in RelaySettings.model_fields.items() if info.default is not None and info.default_factory is None}
    assert with_default <= shown


def test_no_secret_value_in_the_example():
    """Secrets appear only as <placeholders> or _FILE paths, never as something that looks real."""
    for variable, value in re.findall(r"^#?(RELAY_[A-Z0-9_]+)=(.*)$", TEXT, re.MULTILINE):
        if variable.endswith(("TOKEN", "SECRET")) or variable == "RELAY_SLACK_WEBHOOK_URL":
            assert value.startswith("<"), variable
            assert value.endswith(">"), variable
    assert "whsec_" not in TEXT.replace("<whsec_...>", "").replace("whsec_ + base64", "")
