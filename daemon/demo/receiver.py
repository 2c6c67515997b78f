"""RecordingReceiver: a local webhook endpoint that records, verifies and misbehaves on cue.

One receiver for the demo, the tests and the benchmarks. It notes every request (headers,
body, the status it answered, when it arrived), checks Standard Webhooks signatures when
given the secret, and answers from ``script`` first: a status, ``"reset"`` (drop the
connection), ``("sleep", seconds)`` or ``("retry-after", status, seconds)``. Run alone
(``python -m daemon.demo.receiver --port N``) it also answers ``GET /count``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request the receiver accepted or refused (status 0: the connection was reset)."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float = 0.0  # time.time() on arrival
    signature_ok: bool | None = None  # None when the receiver has no secret

    @property
    def event_id(self) -> str:
        """Return the webhook-id header."""
        return self.headers.get("webhook-id", "")

    @property
    def envelope(self) -> dict[str, Any]:
        """Decode the body."""
        envelope: dict[str, Any] = json.loads(self.body)
        return envelope


def verify_signature(*, secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature the way a receiver's library would."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split())


@dataclass
class RecordingReceiver:
    """A webhook receiver; ``script`` holds answers to give before answering ``default_status``."""

    script: deque[Any] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    default_status: int = 200
    delay_s: float = 0.0  # how long every answer takes (a receiver doing real work), after any scripted sleep
    secret: str | None = field(default=None, repr=False)
    path: str = "/hook"
    on_delivery: Callable[[Received], None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port); return the hook URL."""
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}{self.path}"
        return self.url

    def build_app(self) -> web.Application:
        """Return the aiohttp app: POST the hook path, GET /count."""
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        app.router.add_get("/count", self._count)
        return app

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    @property
    def delivered(self) -> list[Received]:
        """Return the requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]  # noqa: PLR2004 - the 2xx range

    def delivered_ids(self) -> set[str]:
        """Return the event ids delivered at least once."""
        return {r.event_id for r in self.delivered}

    @property
    def bad_signatures(self) -> int:
        """Count delivered requests whose signature did not verify."""
        return sum(1 for r in self.delivered if r.signature_ok is False)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self.script.popleft() if self.script else self.default_status
        if answer == "reset":
            if request.transport is not None:
                request.transport.close()
            self._note(request, body, 0)
            return web.Response(status=500)
        if isinstance(answer, tuple) and answer[0] == "sleep":
            await asyncio.sleep(answer[1])
            answer = 200
        headers = {}
        if isinstance(answer, tuple) and answer[0] == "retry-after":
            headers["Retry-After"] = str(answer[2])
            answer = answer[1]
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self._note(request, body, int(answer))
        return web.Response(status=int(answer), headers=headers)

    async def _count(self, _request: web.Request) -> web.Response:
        return web.json_response({"received": len(self.requests)})

    def _note(self, request: web.Request, body: bytes, status: int) -> None:
        headers = dict(request.headers)
        verified = None if self.secret is None else verify_signature(secret=self.secret, headers=headers, body=body)
        received = Received(headers=headers, body=body, status=status, at=time.time(), signature_ok=verified)
        self.requests.append(received)
        if self.on_delivery is not None and 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            self.on_delivery(received)
        self.changed.set()


def main(argv: list[str] | None = None) -> None:
    """Serve a receiver in its own process until terminated (the benchmarks' receiver)."""
    parser = argparse.ArgumentParser(prog="python -m daemon.demo.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=204)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer each request after this many milliseconds")
    args = parser.parse_args(argv)
    app = RecordingReceiver(default_status=args.status, delay_s=args.delay_ms / 1000).build_app()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
