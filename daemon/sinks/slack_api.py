"""How the Slack app sink reads Slack's Web API answers, and paces its calls.

Slack answers ``{"ok": false, "error": "<code>"}`` (HTTP 200, or 429 for ``ratelimited``);
:func:`classify_error` maps that code and the status to what the dispatcher should do::

    channel_not_found, not_in_channel, invalid_auth, not_authed, token_revoked,
    account_inactive, missing_scope, is_archived, ...    permanent, with a hint (no retry storm)
    ratelimited (429) + Retry-After                      retry after it; updates pause until then
    internal_error, fatal_error, service_unavailable,
    request_timeout, 5xx, timeouts, connection errors    retry
    any other code                                       permanent (retrying sends the same call)
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.sinks import MAX_RETRY_AFTER_S, SendResult, parse_retry_after

RATE_LIMITED = 429
DEFAULT_RETRY_AFTER_S = 30.0  # Slack's Web API answers 429 with a Retry-After; this is for one without
RETRYABLE = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout", "team_added_to_org"})
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_REINSTALL_HINT = "check __TOKEN: a bot token (xoxb-...) of an installed app; reinstall the app for a new one"
HINTS = {
    "channel_not_found": "check __CHANNEL: a channel id (C...) the app can see; a private channel needs the bot invited",
    "not_in_channel": "invite the bot to the channel (/invite @your-app), or add the chat:write.public scope",
    "invalid_auth": _REINSTALL_HINT,
    "not_authed": _REINSTALL_HINT,
    "token_revoked": _REINSTALL_HINT,
    "account_inactive": _REINSTALL_HINT,
    "missing_scope": "add the chat:write scope on the app's OAuth & Permissions page and reinstall it",
    "is_archived": "the channel is archived: unarchive it or set another __CHANNEL",
}


def classify_error(status: int | None, error: str, retry_after: str | None) -> SendResult:
    """Map a Web API failure (HTTP status, Slack's error code) to what the dispatcher should do."""
    hint = HINTS.get(error)
    detail = f"HTTP {status}: {_printable(error) or 'no error code'}" + (f" ({hint})" if hint else "")
    if status == RATE_LIMITED or error == "ratelimited":
        asked_s = parse_retry_after(retry_after)
        wait_s = min(DEFAULT_RETRY_AFTER_S if asked_s is None else asked_s, MAX_RETRY_AFTER_S)
        return SendResult(delivered=False, status=status, detail=detail, retry_after_s=wait_s)
    if status is None or status >= 500 or error in RETRYABLE:  # noqa: PLR2004 - server errors
        return SendResult(delivered=False, status=status, detail=detail)
    return SendResult(delivered=False, status=status, detail=detail, permanent=True)


@dataclass
class TokenBucket:
    """Slack's per-method tier as a bucket: ``rate_per_s`` tokens a second, at most ``burst`` saved up.

    Progress updates take a token only when one is there; a final update always takes one,
    even into debt, so it is never dropped and later progress waits for it.
    """

    rate_per_s: float
    burst: float
    tokens: float = 0.0
    at: float | None = None

    def take(self, now: float, *, force: bool = False) -> bool:
        """Take a token at ``now`` (monotonic seconds); False if none is left (unless ``force``)."""
        elapsed = 0.0 if self.at is None else max(0.0, now - self.at)
        self.tokens = self.burst if self.at is None else min(self.burst, self.tokens + elapsed * self.rate_per_s)
        self.at = now
        if self.tokens < 1 and not force:
            return False
        self.tokens -= 1
        return True


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:100]
