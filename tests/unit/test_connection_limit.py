"""The relay's one HTTP session holds enough connections for every project's poll and every sink's sends."""

from __future__ import annotations

from daemon.bootstrap import connection_limit
from daemon.settings import load_settings
from tests.conftest import APP_TOKEN


def settings_with(projects: int, tmp_path):
    """Return settings with ``projects`` named projects and one webhook sink (4 concurrent sends)."""
    env = {"RELAY_ENV_FILE": str(tmp_path / "absent.env"), "RELAY_WEBHOOK_URL": "https://hooks.example.com/in"}
    for n in range(projects):
        env |= {f"RELAY_PROJECTS__P{n}__APP_ID": f"app-{n}", f"RELAY_PROJECTS__P{n}__APP_TOKEN": APP_TOKEN}
    return load_settings(env)


def test_a_few_projects_keep_aiohttps_default_and_many_raise_it(tmp_path):
    """Two projects fit aiohttp's default 100 connections; 120 projects get room for all their polls and the sink's sends, twice over."""
    assert connection_limit(settings_with(2, tmp_path)) == 100
    assert connection_limit(settings_with(120, tmp_path)) == 2 * (120 + 4)
