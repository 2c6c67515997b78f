"""``voucherify-relay send-test``: one clearly marked sample event through each sink's real send path."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import aiohttp

from daemon.bootstrap import build_sinks
from daemon.errors import ConfigError
from daemon.model import Delivery
from daemon.normalize import test_event
from daemon.settings import RelaySettings
from daemon.sinks import SendResult


async def send_test(settings: RelaySettings, *, only: str | None = None) -> int:
    """Send a ``relay.test`` event to every sink (or one); print each receiver's answer; 0 if all delivered."""
    configured = settings.all_sinks()
    if only is not None and only.lower() not in configured:
        raise ConfigError("--sink", f"no sink named {only!r}; configured: {', '.join(sorted(configured)) or 'none'}")
    event = test_event(detected_at=datetime.now(tz=UTC), token=secrets.token_hex(8))
    failures = 0
    async with aiohttp.ClientSession() as session:
        sinks = build_sinks(settings, session)
        for name in [only.lower()] if only else sorted(sinks):
            sink = sinks[name]
            body = event.body()
            delivery = Delivery(row_id=0, event_id=event.id, event_type=event.type, sink=name, action_id="", body=body, attempts=0, created_at=time.time())
            result = await sink.send(delivery)
            verdict = "delivered" if result.delivered else "FAILED"
            advice = _advice(result)
            print(f"sink {name} ({sink.describe()}): {verdict}: {result.detail}{advice}")
            failures += 0 if result.delivered else 1
    print(f"test event {event.id}: {len(sinks if not only else [only]) - failures} delivered, {failures} failed")
    return 0 if failures == 0 else 1


def _advice(result: SendResult) -> str:
    if result.delivered:
        return ""
    if result.redirect_to is not None:
        return f" (the receiver redirects to {result.redirect_to}; configure that URL instead)"
    if result.gone:
        return " (the receiver says this endpoint is gone: check the URL)"
    if result.permanent:
        return " (the receiver refused the configuration: check the URL and the channel)"
    return " (a temporary failure: the daemon would retry it)"
