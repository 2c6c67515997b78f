"""The real CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.replica_set import ReplicaSet
from tests.conftest import watch_output
from tests.fakes.tcp_proxy import TcpProxy


async def stop_replicas(replicas: ReplicaSet, proxies: list[TcpProxy]) -> None:
    """Stop every replica and close the proxies; no replica may have crashed, and each exited cleanly or was killed by the test."""
    codes = await replicas.stop()
    for proxy in proxies:
        await proxy.close()
    assert not [line for line in replicas.output().splitlines() if "Traceback" in line or '"level": "critical"' in line], "no replica crashed"
    assert all(code in (0, -9) for code in codes), codes


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    """Return a clean environment for the CLI: PATH and friends, no RELAY_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class RelayProcess:
    """``voucherify-relay run`` in a child process, its output collected."""

    env: dict[str, str]
    output: list[str] = field(default_factory=list)

    async def start(self) -> None:
        """Start the daemon."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "run",
            env=cli_env(self.env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        watch_output(lambda: "".join(self.output))

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    async def wait(self, timeout_s: float = 30) -> int:
        """Wait for the daemon to exit by itself; return the exit status."""
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code

    async def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run a CLI command to completion; return (status, stdout, stderr)."""

    async def run(*args: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            *args,
            env=cli_env(env),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode is not None
        watch_output(lambda: out.decode() + err.decode())
        return proc.returncode, out.decode(), err.decode()

    return run
