"""The Voucherify stand-in in its own process, preloaded with finished actions.

``python -m bench.standin_server --port N --actions 1000`` serves N finished actions
created over the last ``--spread-hours`` hours, so the relay's newest list page spans
more than its 10-minute overlap and a steady cycle is one list request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import APP_ID, APP_TOKEN
from daemon.demo.standin import VoucherifyStandIn

TYPES = ("CUSTOMERS.IMPORT_CSV", "VOUCHERS.IMPORT_CSV", "PRODUCTS.IMPORT_CSV", "VOUCHERS.BULK_UPDATE")


def preload(standin: VoucherifyStandIn, *, actions: int, spread_hours: float, seed: int = 1) -> None:
    """Add ``actions`` finished actions created at random over the last ``spread_hours``."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for offset in sorted((rng.uniform(60.0, spread_hours * 3600.0) for _ in range(actions)), reverse=True):
        standin.add_action(rng.choice(TYPES), status="DONE", progress=100, created_at=now - timedelta(seconds=offset))


async def serve(port: int, *, actions: int, spread_hours: float) -> None:
    """Serve until cancelled."""
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    preload(standin, actions=actions, spread_hours=spread_hours)
    await standin.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await standin.close()


def main() -> None:
    """Parse arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--spread-hours", type=float, default=48.0)
    args = parser.parse_args()
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, actions=args.actions, spread_hours=args.spread_hours))


if __name__ == "__main__":
    main()
