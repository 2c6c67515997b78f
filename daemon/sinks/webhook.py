"""WebhookSink: POST the event, signed the Standard Webhooks way.

Redirects are never followed (aiohttp would turn a 301/302 into a bodyless GET that
"succeeds", or post the signed body to another host): a 3xx is a failed attempt.
Every answer but 2xx and 410 Gone is retried, 4xx included: a receiver's 4xx is most
often a temporary misdeploy (docs/events.md, "Which answers are retried").

Headers ``webhook-id`` (the event id: receivers deduplicate on it),
``webhook-timestamp`` (send time, seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per configured secret,
space-separated, so receivers can rotate). The signed bytes are the bytes sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import aiohttp

from daemon.constants import USER_AGENT
from daemon.httpio import read_at_most
from daemon.model import Delivery
from daemon.sink_settings import SinkSettings
from daemon.sinks import ANSWER_BYTES, SendResult, parse_retry_after, redirect_result

GONE = 410


def sign_payload(*, secrets: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for ``body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = [base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in secrets]
    return " ".join(f"v1,{sig}" for sig in signatures)


class WebhookSink:
    """Deliver events to one HTTP endpoint."""

    kind = "webhook"

    def __init__(self, name: str, settings: SinkSettings, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.max_concurrency = settings.max_concurrency
        self._url = settings.target_url()
        self._display = settings.display_url()
        self._secrets = settings.secrets()
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session = session

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, url={self._display!r})"

    def describe(self) -> str:
        """Return the sink's kind and redacted URL."""
        return f"webhook {self._display}" + ("" if self._secrets else " (unsigned)")

    async def send(self, delivery: Delivery) -> SendResult:
        """POST one event; classify the answer."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._secrets:
            headers["webhook-signature"] = sign_payload(secrets=self._secrets, msg_id=delivery.event_id, timestamp=timestamp, body=delivery.body)
        try:
            async with self._session.post(self._url, data=delivery.body, headers=headers, timeout=self._timeout, allow_redirects=False) as response:
                await read_at_most(response, ANSWER_BYTES)
                if 300 <= response.status < 400:  # noqa: PLR2004
                    return redirect_result(status=response.status, sink_url=self._url, location=response.headers.get("Location"))
                return _classify(response.status, response.headers.get("Retry-After"))
        except TimeoutError:
            return SendResult(delivered=False, status=None, detail=f"timed out after {self._timeout.total:g}s")
        except aiohttp.ClientError as exc:
            return SendResult(delivered=False, status=None, detail=f"connection failed ({type(exc).__name__})")


def _classify(status: int, retry_after: str | None) -> SendResult:
    if 200 <= status < 300:  # noqa: PLR2004
        return SendResult(delivered=True, status=status, detail=f"HTTP {status}")
    if status == GONE:
        return SendResult(delivered=False, status=status, detail="HTTP 410: endpoint gone", gone=True)
    return SendResult(delivered=False, status=status, detail=f"HTTP {status}", retry_after_s=parse_retry_after(retry_after))
