"""The state file deleted or replaced under a running relay: it stops polling and sending and says why."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from structlog.testing import capture_logs

from tests.conftest import baseline, running, until
from tests.integration.test_relay_health import get


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
async def test_a_vanished_state_file_stops_polling_and_fails_readiness(standin, receiver, make_settings, tmp_path, damage):
    """Deleting or replacing state.db under the relay fails /readyz naming the file, logs it once, and stops polls and sends."""
    action_id = standin.add_action()
    settings = make_settings(http_listen="127.0.0.1:0")
    with capture_logs() as logs:
        async with running(settings) as relay:
            await baseline(relay)
            if damage == "deleted":
                settings.state_path.unlink()
            else:
                sqlite3.connect(tmp_path / "other.db").close()
                (tmp_path / "other.db").replace(settings.state_path)
            await until(lambda: any(e["event"] == "store.file_replaced" for e in logs), timeout_s=5)
            lists = standin.count("list")
            standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await asyncio.sleep(0.6)  # six poll intervals
            status, body = await get(relay.http_port or 0, "/readyz")
    assert status == 503
    assert f"{settings.state_path} was {damage}" in body
    assert standin.count("list") == lists, "polling stopped"
    assert receiver.requests == []
    assert [e["path"] for e in logs if e["event"] == "store.file_replaced"] == [str(settings.state_path)]
