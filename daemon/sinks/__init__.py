"""The Sink port: somewhere events go (a signed webhook, Slack)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Delivery
from daemon.urls import redact_url, resolve_location

# a receiver's answer is only read for the error message: an endless body must not grow memory
ANSWER_BYTES = 4096
# a Retry-After longer than an hour is a receiver's mistake (or an HTTP date misread as seconds)
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a receiver answered to one attempt.

    ``gone``: the endpoint said it no longer exists (410): stop sending to it.
    ``permanent``: retrying cannot help (a configuration error): dead-letter now.
    ``redirect_to``: the receiver answered 3xx to this (redacted) address; it is not followed.
    """

    delivered: bool
    status: int | None
    detail: str
    retry_after_s: float | None = None
    gone: bool = False
    permanent: bool = False
    redirect_to: str | None = None


class Sink(Protocol):
    """A destination for events."""

    name: str
    kind: str
    max_concurrency: int

    def describe(self) -> str:
        """Return a loggable description (never a secret)."""
        ...

    async def send(self, delivery: Delivery) -> SendResult:
        """Deliver one event; never raise for receiver or network trouble."""
        ...


class LiveSink(Protocol):
    """A sink that shows in-flight actions' progress between their events (the Slack app sink)."""

    name: str

    async def update_progress(self, snapshots: Sequence[ActionSnapshot], *, project: str = DEFAULT_PROJECT) -> int:
        """Best-effort: show these in-flight actions' progress (all of ``project``); return how many messages changed; never raise."""
        ...


def redirect_result(*, status: int, sink_url: str, location: str | None) -> SendResult:
    """Classify a 3xx: a failed attempt (retried), naming where the receiver points, redacted like a sink URL."""
    target = redact_url(resolve_location(sink_url, location)) if location else "(no Location header)"
    return SendResult(delivered=False, status=status, detail=f"HTTP {status}: redirects to {target} (not followed)", redirect_to=target)


def parse_retry_after(value: str | None) -> float | None:
    """Return a receiver's Retry-After in seconds, if it gave a usable one."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
