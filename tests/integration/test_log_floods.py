"""Log floods: huge fields are clipped in the rendered line, repeated warnings are counted instead of printed, the listener sheds idle connections."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest
import structlog

from daemon.health import MAX_CONNECTIONS, HealthServer
from daemon.logs import MAX_FIELD_CHARS, RepeatLimiter, configure_logging
from tests.conftest import until


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


@pytest.fixture
def rendered() -> Iterator[io.StringIO]:
    """Configure the relay's JSON logging into a buffer, restoring the global set-up afterwards."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers, root.level
    buffer = io.StringIO()
    yield buffer
    structlog.configure(**saved)
    root.handlers, root.level = handlers, level


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    """Return the JSON lines written so far."""
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_a_one_megabyte_field_is_clipped_in_the_rendered_line(rendered: io.StringIO) -> None:
    """A 1 MB string in a log field (ours or aiohttp's message) renders as its prefix and the count of cut characters."""
    configure_logging(fmt="json", stream=rendered)
    huge = "a" * 1_000_000
    structlog.get_logger("daemon.poller").warning("action.recheck_failed", action_id=huge, caused_by=[huge])
    logging.getLogger("aiohttp.server").error("Error handling request %s", huge)
    out = rendered.getvalue()
    assert len(out) < 4 * MAX_FIELD_CHARS + 1000
    ours, theirs = lines(rendered)
    assert ours["action_id"] == "a" * MAX_FIELD_CHARS + f"…(+{1_000_000 - MAX_FIELD_CHARS} chars)"
    assert str(theirs["event"]).endswith(" chars)")


def test_a_thousand_identical_warnings_print_a_bounded_number_of_lines(rendered: io.StringIO) -> None:
    """1,000 repeats of one warning in a second print the limit, then one log.suppressed line with the count."""
    clock = FakeClock()
    configure_logging(fmt="json", stream=rendered, limiter=RepeatLimiter(limit=20, interval_s=60, clock=clock))
    log = structlog.get_logger("daemon.poller")
    for n in range(1000):
        log.warning("poll.failed", caused_by=f"HTTP 500 #{n}")
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
    log.info("poll.completed", listed=1)
    assert len(lines(rendered)) == 20 + 20 + 1
    clock.now += 61
    log.info("poll.completed", listed=1)
    summaries = [line for line in lines(rendered) if line["event"] == "log.suppressed"]
    assert {(s["suppressed_event"], s["count"]) for s in summaries} == {
        ("poll.failed", 980),
        ("socket.accept() out of system resource", 980),
    }
    assert len(lines(rendered)) == 41 + 2 + 1


class AlwaysUp:
    """A health source that is always alive and ready."""

    def alive(self) -> tuple[bool, str]:
        """Report alive."""
        return True, "up"

    def ready(self) -> tuple[bool, str]:
        """Report ready."""
        return True, "up"


async def healthz_within(port: int, *, timeout_s: float) -> int:
    """Probe /healthz like a kubelet: retry refused connections until ``timeout_s``; return the status."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def test_five_hundred_idle_connections_neither_block_healthz_nor_flood_the_log(rendered: io.StringIO) -> None:
    """With 500 idle connections open, /healthz still answers, the ones over the cap are closed and the log stays short."""
    configure_logging(fmt="json", stream=rendered)
    server = HealthServer(AlwaysUp(), idle_timeout_s=0.5)
    port = await server.start("127.0.0.1", 0)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(500)]
    try:
        await until(lambda: sum(r.at_eof() for r, _ in idle) >= 500 - MAX_CONNECTIONS, timeout_s=5)
        assert await healthz_within(port, timeout_s=3) == 200  # once the idle timeout frees a slot
        await until(lambda: all(r.at_eof() for r, _ in idle), timeout_s=5)
    finally:
        for _, writer in idle:
            writer.close()
        await server.close()
    assert len(lines(rendered)) < 40
