"""The state file through the real CLI: read-only commands never create it, and links cannot bypass the instance lock."""

from __future__ import annotations

import os

import pytest

from tests.conftest import relay_env, until
from tests.e2e.conftest import RelayProcess
from tests.e2e.test_cli_store_faults import assert_one_clear_line, run_relay


@pytest.mark.parametrize("command", [("outbox", "list"), ("outbox", "list", "--dead"), ("outbox", "replay", "--dead"), ("outbox", "replay", "7")])
async def test_outbox_commands_never_create_a_state_database(standin, receiver, tmp_path, run_cli, command):
    """`outbox list` and `outbox replay` on a missing state file exit 1 saying so, and leave no file behind."""
    state = tmp_path / "state" / "state.db"
    env = relay_env(tmp_path, standin, receiver, state_url=f"sqlite:///{state}")
    code, out, err = await run_cli(*command, env=env)
    assert code == 1, out + err
    assert f"no state database at {state}" in err
    assert "Traceback" not in err
    assert not state.parent.exists()


@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_a_link_to_the_state_file_meets_the_same_lock(standin, receiver, tmp_path, link):
    """A second relay reaching the running one's database through a symlink or a hard link exits 1 'already running'; the event is posted once."""
    action_id = standin.add_action()
    first = RelayProcess(relay_env(tmp_path, standin, receiver))
    await first.start()
    try:
        await until(lambda: any("poll.completed" in line for line in first.output), timeout_s=20)
        other = tmp_path / "elsewhere" / "relay.db"
        other.parent.mkdir()
        if link == "symlink":
            other.symlink_to(tmp_path / "state.db")
        else:
            os.link(tmp_path / "state.db", other)
        code, err = await run_relay(relay_env(tmp_path, standin, receiver, state_url=f"sqlite:///{other}"), cwd=tmp_path)
        assert_one_clear_line(code, err, "another voucherify-relay is already running")
        standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1, timeout_s=10)
    finally:
        assert await first.terminate() == 0
    assert len(receiver.requests) == 1
