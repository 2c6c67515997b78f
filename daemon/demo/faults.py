"""What the stand-in does wrong on cue: scripted faults and a rolling per-minute rate limit."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Final

from aiohttp import web

from daemon.demo.wire import CANNED, Json, canned_json, gateway_error, too_many_requests

_STATUS_FAULTS: Final = frozenset({"429", "500", "502", "503", "401", "403"})
FAULTS: Final = _STATUS_FAULTS | {"timeout", "reset", "malformed", "truncated", "shuffle"}
PATHS: Final = frozenset({"list", "get", "any"})
PARAMS: Final = frozenset({"retry_after", "delay_s"})  # a 429's Retry-After seconds; how long a "timeout" holds the request
UNLIMITED: Final = 1_000_000  # nominal X-Rate-Limit-Limit when no limit is configured
_WINDOW: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted fault waiting for its next matching requests."""

    kind: str
    path: str
    remaining: int
    params: Json = field(default_factory=dict)


class FaultScript:
    """The faults still to play, first scripted first served."""

    def __init__(self) -> None:
        """Start with no fault."""
        self._faults: list[Fault] = []

    def add(self, fault: str, *, times: int, path: str, params: Json) -> None:
        """Script a fault for the next `times` requests to path; raise ValueError for unknown ones (or unknown parameters)."""
        if fault not in FAULTS or path not in PATHS or times < 1 or not params.keys() <= PARAMS:
            msg = f"unknown fault {fault!r}, path {path!r}, times {times} or parameters {sorted(params)} (known: {sorted(PARAMS)})"
            raise ValueError(msg)
        self._faults.append(Fault(fault, "list" if fault == "shuffle" else path, times, params))

    @property
    def pending(self) -> tuple[Fault, ...]:
        """Return the faults not played yet."""
        return tuple(self._faults)

    def take(self, kind: str) -> Fault | None:
        """Return the fault the next request to `kind` ("list" or "get") meets, if any."""
        for i, fault in enumerate(self._faults):
            if fault.path in ("any", kind):
                if fault.remaining == 1:
                    del self._faults[i]
                else:
                    self._faults[i] = replace(fault, remaining=fault.remaining - 1)
                return fault
        return None


def status_fault_response(fault: Fault, *, now: datetime) -> web.Response:
    """Answer a scripted status fault: 429 with headers, canned JSON, or a proxy's HTML page."""
    status = int(fault.kind)
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return too_many_requests(int(fault.params.get("retry_after", 1)), now=now)
    if status in CANNED:
        return canned_json(status)
    return gateway_error(status)


class RollingLimit:
    """At most `per_minute` requests in any rolling minute (no limit when None)."""

    def __init__(self, per_minute: int | None) -> None:
        """Set the limit."""
        self.per_minute = per_minute
        self._window: deque[datetime] = deque()

    def consume(self, now: datetime) -> int | None:
        """Admit one request into the rolling window or return the seconds to wait."""
        while self._window and self._window[0] <= now - _WINDOW:
            self._window.popleft()
        if self.per_minute is not None and len(self._window) >= self.per_minute:
            return max(1, math.ceil((self._window[0] + _WINDOW - now).total_seconds()))
        self._window.append(now)
        return None

    @property
    def limit(self) -> int:
        """Return the X-Rate-Limit-Limit value."""
        return self.per_minute or UNLIMITED

    @property
    def remaining(self) -> int:
        """Return the X-Rate-Limit-Remaining value."""
        return max(0, self.limit - len(self._window))
