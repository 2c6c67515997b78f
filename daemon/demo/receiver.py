"""RecordingReceiver: a real aiohttp webhook endpoint that records, verifies and misbehaves on cue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request the receiver accepted or refused."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event_id(self) -> str:
        """Return the webhook-id header."""
        return self.headers.get("webhook-id", "")

    @property
    def envelope(self) -> dict[str, Any]:
        """Decode the body."""
        return json.loads(self.body)


def verify_signature(*, secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature the way a receiver's library would."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split())


@dataclass
class RecordingReceiver:
    """A webhook receiver; ``script`` holds answers to give before answering 200."""

    script: deque[Any] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    default_status: int = 200
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        """Listen on a free loopback port; return the hook URL."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self.url

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    @property
    def delivered(self) -> list[Received]:
        """Return the requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_ids(self) -> set[str]:
        """Return the event ids delivered at least once."""
        return {r.event_id for r in self.delivered}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self.script.popleft() if self.script else self.default_status
        if answer == "reset":
            assert request.transport is not None
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
        self._note(request, body, int(answer))
        return web.Response(status=int(answer), headers=headers)

    def _note(self, request: web.Request, body: bytes, status: int) -> None:
        self.requests.append(Received(headers=dict(request.headers), body=body, status=status))
        self.changed.set()
