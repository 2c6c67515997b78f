"""The value types the settings share, and one sink's settings (``RELAY_SINKS__<NAME>__*``).

Durations, type globs, outcomes, http(s) URLs, Standard Webhooks secrets, PostgreSQL URLs:
each parsed and checked once, with an error that names the problem and never echoes a
secret. Secrets and URLs end up in HTTP headers and request lines, so control characters
(CR, LF, TAB, ...) in them are refused here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from datetime import timedelta
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from daemon.projects import check_project_name
from daemon.urls import has_control_chars, postgres_password, redact_url

PREFIX = "RELAY_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
MAX_DURATION_S = 3650 * 86400.0
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_POSTGRES_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DBNAME (libpq query parameters such as ?sslmode=require allowed)"


def check_postgres_url(value: str) -> str:
    """Refuse a postgresql:// URL libpq cannot parse, naming the problem but never echoing the URL or its password."""
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - only PostgreSQL users pay for importing the driver

    parts = urlsplit(value)
    if "," not in parts.netloc:  # libpq's multi-host form has no single port to check
        try:
            _ = parts.port
        except ValueError:
            msg = f"the port is not a number from 1 to 65535: use {_POSTGRES_FORM}"
            raise ValueError(msg) from None
    try:
        conninfo_to_dict(value)
    except Exception as exc:  # noqa: BLE001 - psycopg raises ProgrammingError, or ValueError for a bad port
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = postgres_password(value)
        if password:
            reason = reason.replace(password, "***")
        msg = f"is not a PostgreSQL URL libpq accepts ({reason}): use {_POSTGRES_FORM}"
        raise ValueError(msg) from None
    return value


def parse_duration(value: object) -> object:
    """Accept ``90s``, ``15m``, ``2h``, ``1d``, ``1w``, ``250ms`` or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return parse_duration(str(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            msg = f"not a duration (use e.g. 90s, 15m, 2h, 1d): {value!r}"
            raise ValueError(msg)
        seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
        if seconds > MAX_DURATION_S:
            msg = f"{value!r} is too long (at most 3650d)"
            raise ValueError(msg)
        return timedelta(seconds=seconds)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
OUTCOMES = ("failure", "partial", "success", "stuck")
_REPLICA_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPLICA_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def default_replica_id() -> str:
    """Return ``<hostname>-<pid>`` in safe characters, clipped to fit 64 (RELAY_REPLICA_ID's default)."""
    import socket  # noqa: PLC0415 - only needed for the default

    pid = f"-{os.getpid()}"
    host = _REPLICA_UNSAFE.sub("_", socket.gethostname())[: 64 - len(pid)] or "relay"
    return host + pid


_TYPE_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


def split_list(value: object) -> object:
    """Accept ``a,b,c`` (or a JSON-free space-separated list) as well as a real list."""
    if isinstance(value, str):
        return [part for part in re.split(r"[,\s]+", value.strip()) if part]
    return value


def _check_type_globs(globs: list[str]) -> list[str]:
    for glob in globs:
        if not _TYPE_GLOB.match(glob):
            msg = f"{glob!r} is not an action-type glob (letters, digits, _ . * ? [ ]; e.g. VOUCHERS.* or *.IMPORT_CSV)"
            raise ValueError(msg)
    return [g.upper() for g in globs]


def _check_outcomes(outcomes: list[str]) -> list[str]:
    unknown = [o for o in outcomes if o.lower() not in OUTCOMES]
    if unknown:
        msg = f"unknown outcome {unknown[0]!r}: use any of {', '.join(OUTCOMES)}"
        raise ValueError(msg)
    return [o.lower() for o in outcomes]


_T = TypeVar("_T")


def reject_control_chars(value: _T) -> _T:
    """Refuse a secret or URL holding a control character, without echoing it."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str) and has_control_chars(raw):
        msg = "contains a control character (CR, LF, TAB or another below 0x20, or DEL): remove it"
        raise ValueError(msg)
    return value


def _check_events(events: list[str]) -> list[str]:
    unknown = [e for e in events if e.lower() not in EVENT_KINDS]
    if unknown or not events:
        msg = f"unknown event {unknown[0]!r}: use any of {', '.join(EVENT_KINDS)}" if unknown else f"name at least one of {', '.join(EVENT_KINDS)}"
        raise ValueError(msg)
    return [e.lower() for e in events]


TypeGlobs = Annotated[list[str], NoDecode, BeforeValidator(split_list), AfterValidator(_check_type_globs)]
Outcomes = Annotated[list[str], NoDecode, BeforeValidator(split_list), AfterValidator(_check_outcomes)]
EventKinds = Annotated[list[str], NoDecode, BeforeValidator(split_list), AfterValidator(_check_events)]
ProjectNames = Annotated[list[str], NoDecode, BeforeValidator(split_list), AfterValidator(lambda names: [check_project_name(n) for n in names])]
EVENT_KINDS = ("started", "completed", "failed", "stuck")
DEFAULT_EVENTS = ("completed", "failed", "stuck")
SLACK_API_URL = "https://slack.com/api/"
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,20}$")


class SinkSettings(BaseModel):
    """One destination: ``RELAY_SINKS__<NAME>__KIND``, ``__URL``, ``__SECRET``, ..."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["webhook", "slack", "slack_app"]
    url: SecretStr | None = None  # webhook and slack: the receiver (a Slack incoming webhook's URL is its credential)
    secret: SecretStr | None = None
    token: SecretStr | None = None  # slack_app: the bot token (xoxb-...)
    channel: str | None = None  # slack_app: the channel id (C..., G...)
    api_url: str = SLACK_API_URL  # slack_app: Slack's Web API base (tests, Enterprise Grid proxies)
    update_interval_s: float = Field(default=5.0, ge=0.05, le=3600)  # slack_app: at most one progress update per message this often
    events: EventKinds | None = None  # None: started too for slack_app, completed/failed/stuck otherwise
    max_concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=15.0, gt=0, le=300)
    types: TypeGlobs = Field(default_factory=list)
    outcomes: Outcomes = Field(default_factory=list)
    min_interval_s: float = Field(default=1.0, ge=0, le=60)  # Slack: about one message a second per webhook
    projects: ProjectNames | None = None  # None: every project's events

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> SinkSettings:
        if self.kind == "slack_app":
            return self._check_app()
        if self.url is None:
            msg = f"__URL: is required for a {self.kind} sink"
            raise ValueError(msg)
        if self.kind == "slack" and self.secret is not None:
            msg = "a Slack sink takes no secret (its URL is the credential)"
            raise ValueError(msg)
        if self.token is not None or self.channel is not None:
            msg = f"__{'TOKEN' if self.token is not None else 'CHANNEL'}: only a slack_app sink (a Slack app) takes it; a {self.kind} sink needs only __URL"
            raise ValueError(msg)
        if self.kind == "slack" and "started" in self.wanted_events():
            msg = "__EVENTS: an incoming-webhook Slack sink cannot show started actions; use KIND=slack_app for live messages"
            raise ValueError(msg)
        return self

    def _check_app(self) -> SinkSettings:
        if self.url is not None or self.secret is not None:
            msg = f"__{'URL' if self.url is not None else 'SECRET'}: a slack_app sink takes __TOKEN and __CHANNEL instead"
            raise ValueError(msg)
        if self.token is None or not self.token.get_secret_value().startswith("xoxb-"):
            msg = "__TOKEN: a slack_app sink needs a bot token (xoxb-...) from the app's OAuth & Permissions page"
            raise ValueError(msg)
        if self.channel is None or not _CHANNEL_ID.match(self.channel):
            msg = "__CHANNEL: a slack_app sink needs a channel id such as C0123ABCD (channel details > About), not a #name"
            raise ValueError(msg)
        return self

    def wanted_events(self) -> tuple[str, ...]:
        """Return the event kinds this sink receives (started, completed, failed, stuck)."""
        if self.events is not None:
            return tuple(self.events)
        return EVENT_KINDS if self.kind == "slack_app" else DEFAULT_EVENTS

    def accepts(self, *, action_type: str, outcome: str, event: str = "completed", project: str = "default") -> bool:
        """Whether this sink's filters let an event of this kind, action type, outcome and project through.

        A started event has no outcome yet: a sink filtering on outcomes does not get it.
        """
        if event not in self.wanted_events() or (event == "started" and self.outcomes):
            return False
        if self.projects is not None and project not in self.projects:
            return False
        type_ok = not self.types or any(fnmatch.fnmatchcase(action_type.upper(), glob) for glob in self.types)
        return type_ok and (event == "started" or not self.outcomes or outcome in self.outcomes)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else check_http_url(reject_control_chars(value))

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else reject_control_chars(SecretStr(value.get_secret_value().strip()))

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        check_http_url(SecretStr(reject_control_chars(value)))
        return value if value.endswith("/") else value + "/"

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and reject_control_chars(value) is not None:
            for secret in value.get_secret_value().split():
                _decode_whsec(secret)
        return value

    def secrets(self) -> list[bytes]:
        """Return the signing keys, newest first (several are accepted for rotation)."""
        if self.secret is None:
            return []
        return [_decode_whsec(s) for s in self.secret.get_secret_value().split()]

    def display_url(self) -> str:
        """Return the URL safe to show: scheme, host, port and at most the first path segment (an app: its API and channel)."""
        if self.url is None:
            return f"{redact_url(self.api_url)} channel {self.channel}"
        return redact_url(self.url.get_secret_value())

    def target_url(self) -> str:
        """Return the receiver's full URL (a secret for Slack); only webhook and slack sinks have one."""
        if self.url is None:
            msg = f"a {self.kind} sink has no URL"
            raise ValueError(msg)
        return self.url.get_secret_value()


def check_http_url(value: SecretStr) -> SecretStr:
    """Reject anything but an absolute http(s) URL, without echoing it (it may be a secret)."""
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        msg = "must be an http(s) URL"
        raise ValueError(msg)
    return value


def _decode_whsec(secret: str) -> bytes:
    import base64  # noqa: PLC0415 - only needed when a secret is configured
    import binascii  # noqa: PLC0415

    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or len(key) < 16:  # noqa: PLR2004 - Standard Webhooks: 24-64 bytes
        msg = "must be a Standard Webhooks secret: whsec_ followed by base64 of at least 16 bytes"
        raise ValueError(msg)
    return key
