"""The Voucherify stand-in in its own process, preloaded with finished actions.

``python -m bench.standin_server --port N --actions 1000`` serves N finished actions
created over the last ``--spread-hours`` hours, so the relay's newest list page spans
more than its 10-minute overlap and a steady cycle is one list request. With
``--control-port M``, ``POST http://127.0.0.1:M/churn?finish=K`` finishes the K actions
the previous call started and starts K new ones (bench/cycle_cost_pg.py's "a few actions
finish" cycle).
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

from aiohttp import web

from bench.common import APP_ID, APP_TOKEN
from daemon.demo.standin import VoucherifyStandIn

TYPES = ("CUSTOMERS.IMPORT_CSV", "VOUCHERS.IMPORT_CSV", "PRODUCTS.IMPORT_CSV", "VOUCHERS.BULK_UPDATE")


def preload(standin: VoucherifyStandIn, *, actions: int, spread_hours: float, seed: int = 1) -> None:
    """Add ``actions`` finished actions created at random over the last ``spread_hours``."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for offset in sorted((rng.uniform(60.0, spread_hours * 3600.0) for _ in range(actions)), reverse=True):
        standin.add_action(rng.choice(TYPES), status="DONE", progress=100, created_at=now - timedelta(seconds=offset))


def churn_app(standin: VoucherifyStandIn) -> web.Application:
    """Return the control app: ``POST /churn?finish=K`` finishes the running actions and starts K new ones."""
    running: list[str] = []

    async def churn(request: web.Request) -> web.Response:
        for action_id in running:
            standin.complete_action(action_id, example=TYPES[0])
        running[:] = [standin.add_action(TYPES[0], status="IN_PROGRESS") for _ in range(int(request.query.get("finish", "3")))]
        return web.json_response({"running": running})

    app = web.Application()
    app.router.add_post("/churn", churn)
    return app


async def serve(port: int, *, actions: int, spread_hours: float, control_port: int | None = None) -> None:
    """Serve until cancelled (and the control app on ``control_port``, if given)."""
    standin = VoucherifyStandIn(app_id=APP_ID, app_token=APP_TOKEN)
    preload(standin, actions=actions, spread_hours=spread_hours)
    await standin.start("127.0.0.1", port)
    control = None if control_port is None else web.AppRunner(churn_app(standin), access_log=None)
    if control is not None:
        await control.setup()
        await web.TCPSite(control, "127.0.0.1", control_port).start()
    try:
        await asyncio.Event().wait()
    finally:
        if control is not None:
            await control.cleanup()
        await standin.close()


def main() -> None:
    """Parse arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--spread-hours", type=float, default=48.0)
    parser.add_argument("--control-port", type=int, default=None)
    args = parser.parse_args()
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, actions=args.actions, spread_hours=args.spread_hours, control_port=args.control_port))


if __name__ == "__main__":
    main()
