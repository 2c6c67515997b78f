"""Errors raised by voucherify-relay.

The tree::

    RelayError
    ├── ConfigError              bad environment; the CLI exits 78 and names the variable
    ├── StoreError               the state database cannot be opened, read or written
    │   └── LeaseLostError       this replica no longer holds the polling lease (fencing)
    └── VoucherifyError          anything that went wrong talking to Voucherify
        ├── AuthError            401/403: wrong keys or wrong cluster; never retried
        ├── NotFoundError        404 for an action id
        ├── ClientRequestError   any other 4xx; never retried
        ├── RateLimitedError     429 (or a Retry-After still running); carries retry_at
        ├── BudgetExhaustedError RELAY_API_BUDGET_PER_HOUR would be exceeded; carries retry_at
        ├── ServerError          5xx; retried
        ├── TransportError       timeout, refused or reset connection; retried
        ├── RedirectError        3xx: never followed (the token would go along); names the Location
        └── BadResponseError     a body that is not the JSON we expect (malformed, truncated,
                                 larger than RELAY_API_MAX_RESPONSE_BYTES, nested too deeply)

Messages never contain a secret: they name the endpoint path, never headers or tokens,
and a database by user, host, port and name, never its password.
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; ``variable`` names the culprit."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class StoreError(RelayError):
    """The state database failed."""


class LeaseLostError(StoreError):
    """The replica's polling lease ran out or passed to another: no request, no commit."""


class VoucherifyError(RelayError):
    """A request to Voucherify failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(VoucherifyError):
    """Voucherify refused the credentials (wrong keys or wrong cluster)."""


class NotFoundError(VoucherifyError):
    """The requested async action does not exist."""


class ClientRequestError(VoucherifyError):
    """Voucherify rejected the request itself (4xx other than 401/403/404/429)."""


class _RetryAtError(VoucherifyError):
    def __init__(self, message: str, *, retry_at: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


class RateLimitedError(_RetryAtError):
    """Voucherify answered 429, or its Retry-After has not passed yet."""


class BudgetExhaustedError(_RetryAtError):
    """The configured request budget for the rolling hour is spent."""


class ServerError(VoucherifyError):
    """Voucherify answered 5xx."""


class TransportError(VoucherifyError):
    """The request timed out or the connection failed."""


class RedirectError(VoucherifyError):
    """Voucherify's address answered a redirect; it is not followed (the app token would go along)."""


class BadResponseError(VoucherifyError):
    """The response body was not the JSON document we expected."""
