"""A minimal webhook receiver for the benchmarks: read the body, answer 204, count.

Runs in its own process (``python -m bench.receiver --port N``) so it never shares an
event loop or a core with the sender it measures.
"""

from __future__ import annotations

import argparse

from aiohttp import web


def build_app(status: int) -> web.Application:
    """Return an app answering every POST /hook with ``status`` after reading the body."""
    received = web.AppKey("received", list)

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        request.app[received][0] += 1
        return web.Response(status=status)

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"received": request.app[received][0]})

    app = web.Application()
    app[received] = [0]
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    """Serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=204)
    args = parser.parse_args()
    web.run_app(build_app(args.status), host="127.0.0.1", port=args.port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
