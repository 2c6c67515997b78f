"""The Voucherify adapter: auth, paging primitives, rate limits and retries live here only.

Every dependency exception is mapped to our tree (see :mod:`daemon.errors`) in
:meth:`VoucherifyClient._send`. Retries use tenacity: timeouts, connection errors, 5xx
and 429 are retried with full-jitter exponential backoff, capped in attempts and
time; a 429's ``Retry-After``/``X-Rate-Limit-Retry`` is honoured and remembered, so
no request leaves before it has passed, in this cycle or the next.

Redirects are never followed: aiohttp would resend ``X-App-Id``/``X-App-Token`` to the
other origin. A 3xx is a :class:`RedirectError`, not retried; the next cycle tries again.
Bodies are read in chunks up to ``max_response_bytes`` (an endless body must not grow
memory); error bodies only up to ``ERROR_BODY_BYTES``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from daemon.budget import RequestBudget
from daemon.constants import USER_AGENT
from daemon.errors import (
    AuthError,
    BadResponseError,
    ClientRequestError,
    NotFoundError,
    RateLimitedError,
    RedirectError,
    ServerError,
    TransportError,
    VoucherifyError,
)
from daemon.httpio import read_at_most
from daemon.model import is_action_id
from daemon.urls import resolve_location, without_query

LIST_PATH = "/v1/async-actions"
MAX_INLINE_WAIT_S = 30.0  # a longer Retry-After ends the cycle; the next one waits for it
DEFAULT_429_WAIT_S = 5.0
# the documented 5,000-row results are well under 2 MiB: 16 MiB leaves room without letting a body exhaust memory
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
ERROR_BODY_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of ``GET /v1/async-actions``."""

    actions: list[Any]
    has_more: bool


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to retry one request; tests inject a zero wait."""

    max_attempts: int = 4
    max_total_s: float = 60.0
    backoff_max_s: float = 10.0
    backoff_multiplier_s: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class VoucherifyClient:
    """Talks to one Voucherify project."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        app_id: str,
        app_token: str,
        budget: RequestBudget | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        blocked_until: float = 0.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        permit: Callable[[], None] = lambda: None,
    ) -> None:
        self._session = session
        self._permit = permit  # raises (LeaseLostError) when this replica may not send now
        self._base_url = base_url.rstrip("/")
        self._headers = {"X-App-Id": app_id, "X-App-Token": app_token, "User-Agent": USER_AGENT, "Accept": "application/json"}
        self._budget = budget or RequestBudget(None)
        self._retry = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._blocked_until = blocked_until
        self._sent: list[float] = []
        self._max_response_bytes = max_response_bytes
        self.calls: Counter[tuple[str, str]] = Counter()  # (endpoint, status or error kind)
        self.rate_limit_remaining: int | None = None
        self.rate_limit_limit: int | None = None

    def __repr__(self) -> str:
        return f"VoucherifyClient(base_url={self._base_url!r})"

    @property
    def requests_sent(self) -> int:
        """Return how many requests this client has sent."""
        return sum(self.calls.values())

    @property
    def blocked_until(self) -> float:
        """Return the latest Retry-After deadline Voucherify gave (0: none); the owner persists it."""
        return self._blocked_until

    def resume(self, *, history: list[float], blocked_until: float) -> None:
        """Start from the shared record: the budget's request times and Retry-After deadline other replicas left."""
        self._budget = RequestBudget(self._budget.per_hour, history=history)
        self._blocked_until = max(self._blocked_until, blocked_until)

    def take_sent(self) -> list[float]:
        """Return the send times of the requests made since the last call (the owner records them for the budget)."""
        sent, self._sent = self._sent, []
        return sent

    async def list_page(self, *, limit: int, end_date: str | None = None) -> ListPage:
        """Fetch one page of the async-actions list."""
        params = {"limit": str(limit)} | ({"end_date": end_date} if end_date else {})
        body = await self._request(LIST_PATH, params=params, endpoint="list")
        actions = body.get("async_actions")
        if not isinstance(actions, list):
            msg = f"GET {LIST_PATH}: response has no async_actions list"
            raise BadResponseError(msg)
        return ListPage(actions=actions, has_more=body.get("has_more") is True)

    async def get_action(self, action_id: str) -> dict[str, Any]:
        """Fetch one async action with its ``result``; an id that is not a plain Voucherify id is refused unsent."""
        if not is_action_id(action_id):
            msg = f"GET {LIST_PATH}/{{id}}: refused an id that is not a plain Voucherify id ([A-Za-z0-9_-], 1 to 64 characters)"
            raise ClientRequestError(msg)
        body = await self._request(f"{LIST_PATH}/{quote(action_id, safe='')}", params={}, endpoint="get")
        if not isinstance(body.get("id"), str):
            msg = f"GET {LIST_PATH}/{{id}}: response is not an async action"
            raise BadResponseError(msg)
        return body

    async def _request(self, path: str, *, params: Mapping[str, str], endpoint: str) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts) | stop_after_delay(self._retry.max_total_s),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            sleep=self._retry.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(path, params=params, endpoint=endpoint)
        raise AssertionError  # pragma: no cover - tenacity either returns or reraises

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError):
            return max(0.0, exc.retry_at - time.time())
        backoff = wait_random_exponential(multiplier=self._retry.backoff_multiplier_s, max=self._retry.backoff_max_s)
        return float(backoff(state))

    async def _send(self, path: str, *, params: Mapping[str, str], endpoint: str) -> dict[str, Any]:
        now = time.time()
        if now < self._blocked_until:
            msg = f"GET {path}: Voucherify asked to wait until {self._blocked_until:.0f} (Retry-After)"
            raise RateLimitedError(msg, retry_at=self._blocked_until, status=429)
        self._permit()
        self._budget.acquire(now)
        self._sent.append(now)
        try:
            async with self._session.get(self._base_url + path, params=params, headers=self._headers, timeout=self._timeout, allow_redirects=False) as response:
                self._note_limits(response.headers)
                status = response.status
                raw = await self._read_body(path, response, endpoint=endpoint)
        except TimeoutError:
            self.calls[(endpoint, "timeout")] += 1
            raise TransportError(f"GET {path}: {self._where()}: timed out after {self._timeout.total:g}s (RELAY_API_TIMEOUT_S)") from None
        except aiohttp.ClientPayloadError:
            self.calls[(endpoint, "truncated")] += 1
            raise BadResponseError(f"GET {path}: truncated response body") from None
        except aiohttp.ClientError as exc:
            self.calls[(endpoint, "connection_error")] += 1
            raise TransportError(f"GET {path}: {self._where()}: {_connection_cause(exc)}") from None
        self.calls[(endpoint, str(status))] += 1
        if 300 <= status < 400:  # noqa: PLR2004
            raise _redirect_error(path, status, location=resolve_location(self._base_url + path, response.headers.get("Location")))
        if status >= 400:  # noqa: PLR2004
            raise self._status_error(path, status, raw, response.headers)
        return _decode(path, raw)

    async def _read_body(self, path: str, response: aiohttp.ClientResponse, *, endpoint: str) -> bytes:
        """Read the body up to the cap; an error's body only as far as its message needs."""
        if response.status >= 300:  # noqa: PLR2004
            return (await read_at_most(response, ERROR_BODY_BYTES))[0]
        cap = self._max_response_bytes
        if (response.content_length or 0) > cap:
            response.close()
        else:
            raw, cut = await read_at_most(response, cap, keep_prefix=False)
            if not cut:
                return raw
        self.calls[(endpoint, "too_large")] += 1
        msg = f"GET {path}: response body larger than RELAY_API_MAX_RESPONSE_BYTES ({cap} bytes)"
        raise BadResponseError(msg)

    def _where(self) -> str:
        url = urlsplit(self._base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        return f"cannot reach {url.hostname}:{port} (RELAY_VOUCHERIFY_API_URL)"

    def _note_limits(self, headers: Mapping[str, str]) -> None:
        remaining = _header_int(headers, "X-Rate-Limit-Remaining")
        limit = _header_int(headers, "X-Rate-Limit-Limit")
        self.rate_limit_remaining = remaining if remaining is not None else self.rate_limit_remaining
        self.rate_limit_limit = limit if limit is not None else self.rate_limit_limit

    def _status_error(self, path: str, status: int, raw: bytes, headers: Mapping[str, str]) -> VoucherifyError:
        detail = _error_detail(raw)
        where = f"GET {path}: HTTP {status}{detail}"
        if status in {401, 403}:
            return AuthError(f"{where}: check RELAY_VOUCHERIFY_APP_ID/APP_TOKEN and that RELAY_VOUCHERIFY_API_URL is your project's cluster", status=status)
        if status == 404:  # noqa: PLR2004
            return NotFoundError(where, status=status)
        if status == 429:  # noqa: PLR2004
            retry_at = _retry_at(headers, now=time.time())
            self._blocked_until = max(self._blocked_until, retry_at)
            return RateLimitedError(where, retry_at=retry_at, status=status)
        if status >= 500 or status == 408:  # noqa: PLR2004
            return ServerError(where, status=status)
        return ClientRequestError(where, status=status)


def _connection_cause(exc: aiohttp.ClientError) -> str:
    """Say in words why a connection failed (the dependency's exception names mean little to operators)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed (is it an https server?)"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "name not resolved"
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(os_error, ConnectionResetError):
        return "connection closed by the server"
    return f"connection failed ({type(exc).__name__})"


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, RateLimitedError):
        return exc.retry_at - time.time() <= MAX_INLINE_WAIT_S
    return isinstance(exc, (ServerError, TransportError))


def _retry_at(headers: Mapping[str, str], *, now: float) -> float:
    candidates = [now + DEFAULT_429_WAIT_S] if "Retry-After" not in headers and "X-Rate-Limit-Retry" not in headers else [now]
    retry_after = headers.get("Retry-After", "").strip()
    if retry_after.isdigit():
        candidates.append(now + int(retry_after))
    elif retry_after:
        try:
            candidates.append(parsedate_to_datetime(retry_after).timestamp())
        except (TypeError, ValueError):
            candidates.append(now + DEFAULT_429_WAIT_S)
    epoch = headers.get("X-Rate-Limit-Retry", "").strip()
    if epoch.replace(".", "", 1).isdigit():
        candidates.append(min(float(epoch), now + 3600))
    return max(candidates)


def _redirect_error(path: str, status: int, *, location: str) -> RedirectError:
    target = without_query(location) if "://" in location else location
    msg = f"GET {path}: HTTP {status} redirect to {target}, not followed (it would carry the app token): set RELAY_VOUCHERIFY_API_URL to the API's own address"
    return RedirectError(msg, status=status)


def _decode(path: str, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        msg = f"GET {path}: response body is not valid JSON ({len(raw)} bytes)"
        raise BadResponseError(msg) from None
    except RecursionError:
        msg = f"GET {path}: response body is JSON nested too deeply ({len(raw)} bytes)"
        raise BadResponseError(msg) from None
    if not isinstance(body, dict):
        msg = f"GET {path}: response body is not a JSON object"
        raise BadResponseError(msg)
    return body


def _error_detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k]) for k in ("key", "message", "details") if isinstance(body.get(k), str)]
    return f" ({'; '.join(parts)[:300]})" if parts else ""
