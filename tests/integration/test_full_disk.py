"""A full disk under a running relay: sending pauses instead of resending, /readyz says why, and it recovers alone."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import baseline, outbox_has, running, until
from tests.integration.test_relay_health import get

EVENTS = 10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a real 8 MiB tmpfs to fill up (needs mount rights, as root in a container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, check=False)  # noqa: S603, S607 - fixed arguments, the system mount
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # noqa: S603, S607 - fixed arguments, the system umount


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_pauses_the_sink_instead_of_resending(standin, receiver, make_settings, small_disk):
    """With its first answers unwritable the sink pauses: no resend storm, /readyz names the disk, and all is delivered and recorded once space returns."""
    receiver.script.extend([("sleep", 0.3)] * EVENTS)  # the sends outlast the filling of the disk
    ids = [standin.add_action() for _ in range(EVENTS)]
    settings = make_settings(state_url=f"sqlite:///{small_disk}/state.db", http_listen="127.0.0.1:0")
    with capture_logs() as logs:
        async with running(settings) as relay:
            await baseline(relay)
            for action_id in ids:
                standin.complete_action(action_id, example="SKUS.IMPORT_CSV")
            await until(lambda: outbox_has(relay, pending=EVENTS), interval_s=0.005)
            filler = fill(small_disk)
            await until(lambda: any(e["event"] == "dispatch.store_failed" for e in logs))
            sent = len(receiver.requests)
            await asyncio.sleep(1.5)  # the old dispatcher resent the whole batch every second meanwhile
            assert len(receiver.requests) == sent, "paused: nothing sent (or resent) while the answers cannot be written"
            assert max(Counter(r.event_id for r in receiver.requests).values()) == 1
            status, body = await get(relay.http_port or 0, "/readyz")
            assert status == 503
            assert "cannot write the state database" in body
            assert "database or disk is full" in body
            filler.unlink()
            await until(lambda: outbox_has(relay, pending=0), timeout_s=10)
            assert (await get(relay.http_port or 0, "/readyz"))[0] == 200
            metrics = relay.metrics.render().decode()
    per_event = Counter(r.event_id for r in receiver.requests)
    assert len(per_event) == EVENTS
    assert max(per_event.values()) <= 2, "at most once more after recovery"
    assert 1 <= sum(e["event"] == "dispatch.store_failed" for e in logs) <= 3, "backoff 1 s, 2 s: not one line per second"
    assert any(e["event"] == "dispatch.store_recovered" for e in logs)
    assert 'voucherify_relay_store_write_failures_total{sink="webhook"}' in metrics
