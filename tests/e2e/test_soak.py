"""The long crash soak (bench/soak.py) as a test: ``pytest -m soak``, sized by SOAK_ACTIONS and SOAK_KILLS."""

from __future__ import annotations

import pytest

from bench.common import env_float, env_int, format_table
from bench.soak import run_soak, section

pytestmark = pytest.mark.soak  # deselected by default (addopts: -m "not soak")


@pytest.mark.timeout(3600)
async def test_sigkill_soak_delivers_every_event_to_every_sink(tmp_path):
    """Killed with SIGKILL dozens of times while hundreds of actions complete, the relay delivers every event to both sinks, duplicates sharing id and bytes."""
    result = await run_soak(
        actions=env_int("SOAK_ACTIONS", 300),
        kills=env_int("SOAK_KILLS", 30),
        seed=env_int("SOAK_SEED", 20261123),
        up_min_s=env_float("SOAK_UP_MIN_S", 0.4),
        up_max_s=env_float("SOAK_UP_MAX_S", 2.0),
        drain_s=env_float("SOAK_DRAIN_S", 300.0),
        workdir=tmp_path,
    )
    print(format_table(["metric", "value", "target", "verdict"], section(result).summary))
    assert result.problems() == []
    assert result.kills == env_int("SOAK_KILLS", 30)
