"""Disk and database faults through the real CLI: each ends the start with a clear one-line error, never a traceback."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import relay_env, until, watch_output
from tests.e2e.conftest import RelayProcess, cli_env
from tests.integration.test_store_faults import corrupt, filled_store

# Root ignores file modes; without CAP_DAC_OVERRIDE it obeys them like anyone else.
AS_ORDINARY_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
needs_permissions = pytest.mark.skipif(bool(AS_ORDINARY_USER) and shutil.which("setpriv") is None, reason="running as root without setpriv")


async def run_relay(env: dict[str, str], *, cwd: Path, timeout_s: float = 30) -> tuple[int, str]:
    """Run `voucherify-relay run` until it exits; return its status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *AS_ORDINARY_USER, sys.executable, "-m", "daemon", "run",
        env=cli_env(env), cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    watch_output(lambda: out.decode() + err.decode())
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def assert_one_clear_line(code: int, err: str, *fragments: str) -> None:
    """Check exit status 1 and a single stderr line holding every fragment, without a traceback."""
    assert code == 1, err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    for fragment in fragments:
        assert fragment in line


async def test_a_second_run_on_the_same_state_exits_1_naming_the_lock(standin, receiver, tmp_path):
    """While one relay runs, `run` on the same state file exits 1 saying another relay holds the database's lock."""
    env = relay_env(tmp_path, standin, receiver)
    first = RelayProcess(env)
    await first.start()
    try:
        await until(lambda: any("relay.started" in line for line in first.output), timeout_s=20)
        code, err = await run_relay(env, cwd=tmp_path)
        assert_one_clear_line(code, err, "another voucherify-relay is already running", f"{(tmp_path / 'state.db').resolve()} is locked")
    finally:
        assert await first.terminate() == 0


@pytest.mark.parametrize(
    ("damage", "problem"),
    [("not a database", "file is not a database"), ("corrupted pages", "database disk image is malformed")],
)
async def test_a_damaged_state_file_exits_1_with_a_clear_error(standin, receiver, tmp_path, damage, problem):
    """A state file that is not SQLite, or whose pages are corrupted, stops `run` with one line naming the file and the damage."""
    state = tmp_path / "state.db"
    if damage == "not a database":
        state.write_bytes(b"PK\x03\x04 this is a zip file, not a database" * 100)
    else:
        await filled_store(state)
        corrupt(state)
    code, err = await run_relay(relay_env(tmp_path, standin, receiver), cwd=tmp_path)
    assert_one_clear_line(code, err, "state database", problem, str(state))


@needs_permissions
@pytest.mark.parametrize("read_only", ["directory", "file"])
async def test_read_only_state_exits_1_with_a_clear_error(standin, receiver, tmp_path, read_only):
    """A state directory or database file the relay may not write stops `run` with one line naming the file and the problem."""
    folder = tmp_path / "state"
    folder.mkdir()
    state = folder / "state.db"
    await filled_store(state)
    if read_only == "file":
        for path in folder.iterdir():
            path.chmod(0o444)
    else:
        folder.chmod(0o555)
    try:
        env = relay_env(tmp_path, standin, receiver, state_url=f"sqlite:///{state}")
        code, err = await run_relay(env, cwd=tmp_path)
    finally:
        folder.chmod(0o755)
    assert_one_clear_line(code, err, str(folder))
    assert any(problem in err for problem in ("readonly database", "Permission denied", "unable to open")), err
