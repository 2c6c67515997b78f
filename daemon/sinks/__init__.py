"""The Sink port: somewhere events go (a signed webhook, Slack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.model import Delivery


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a receiver answered to one attempt.

    ``gone``: the endpoint said it no longer exists (410): stop sending to it.
    ``permanent``: retrying cannot help (a configuration error): dead-letter now.
    """

    delivered: bool
    status: int | None
    detail: str
    retry_after_s: float | None = None
    gone: bool = False
    permanent: bool = False


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


def parse_retry_after(value: str | None) -> float | None:
    """Return a receiver's Retry-After in seconds, if it gave a usable one."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
