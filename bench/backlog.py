"""Catching up on a burst past the page cap: cycles, requests and time until the last event.

One process: the Voucherify stand-in, a counting webhook receiver and the real ``Relay``
with the defaults (RELAY_MAX_PAGES_PER_CYCLE=20, 100 a page, 30 s polls while busy).
After the baseline, ``--burst`` actions are created at once and completed at once;
the figures run from that moment until the last event was delivered.

    python -m bench.backlog [--burst 5000] [--poll-interval 30]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from structlog.testing import capture_logs

from bench.common import APP_ID, APP_TOKEN, Section, base_parser, finish, fmt, relay_env
from daemon.bootstrap import build_relay
from daemon.demo.standin import VoucherifyStandIn
from daemon.settings import load_settings


async def start_receiver(seen: set[str]) -> tuple[web.AppRunner, str]:
    """Accept every webhook, remembering its webhook-id."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        seen.add(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def measure(*, burst: int, poll_interval_s: float) -> dict[str, float]:
    """Run one burst to the last delivered event; return the figures."""
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    api_url = await standin.start()
    seen: set[str] = set()
    receiver, hook_url = await start_receiver(seen)
    with tempfile.TemporaryDirectory() as tmp, capture_logs() as logs:
        pace = {"RELAY_POLL_INTERVAL": str(poll_interval_s), "RELAY_IDLE_POLL_INTERVAL": str(poll_interval_s)}  # the burst lands while busy
        relay = await build_relay(load_settings(relay_env(tmp, api_url, hook_url, pace)))
        await relay.start()
        await _until(lambda: relay.last_poll is not None)
        lists, gets = standin.count("list"), standin.count("get")
        ids = [standin.add_action("VOUCHERS.METADATA_UPDATE") for _ in range(burst)]
        for action_id in ids:
            standin.complete_action(action_id)
        started, cycles_before = time.monotonic(), _count(logs, "poll.completed")
        await _until(lambda: len(seen) >= burst)
        elapsed = time.monotonic() - started
        caught_up = [line for line in logs if line["event"] == "list.caught_up"]
        await relay.stop(grace_s=2)
    await receiver.cleanup()
    await standin.close()
    cycles = [line for line in logs if line["event"] == "poll.completed"][cycles_before:]
    return {
        "events": len(seen),
        "cycles": len(cycles),
        "list_requests": standin.count("list") - lists,
        "get_requests": standin.count("get") - gets,
        "max_pages_per_cycle": max(line["pages"] for line in cycles),
        "backlog_pages": caught_up[0]["backlog_pages"] if caught_up else 0,
        "last_event_s": elapsed,
    }


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the state belongs to the relay's and the receiver's tasks
        await asyncio.sleep(0.05)


def _count(logs: list[dict[str, object]], event: str) -> int:
    return sum(1 for line in logs if line["event"] == event)


def main() -> None:
    """Run the benchmark and print its section."""
    parser = base_parser(__doc__)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--poll-interval", type=float, default=30.0)
    args = parser.parse_args()
    figures = asyncio.run(measure(burst=args.burst, poll_interval_s=args.poll_interval))
    section = Section("backlog", f"List backlog: a burst of {args.burst:,} at the defaults (poll {args.poll_interval:g}s)", raw=figures)
    section.summary = [[name, fmt(value), "", ""] for name, value in figures.items()]
    finish(section, args.json)


if __name__ == "__main__":
    main()
