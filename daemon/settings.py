"""Configuration: environment variables only (plus an optional ``.env`` file), parsed once.

Every secret may instead be read from a file named by ``<VARIABLE>_FILE`` (systemd
credentials, Docker secrets). Errors become :class:`ConfigError` naming the variable.
Secrets and URLs end up in HTTP headers and request lines, so control characters (CR, LF,
TAB, ...) in them are refused here rather than failing, or injecting a header, later.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from daemon.errors import ConfigError
from daemon.projects import ProjectSettings, ProjectSpec, check_project_name, resolve_projects
from daemon.urls import POSTGRES_SCHEMES, describe_postgres_url, has_control_chars, parse_listen, postgres_password, redact_url

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


class RelaySettings(BaseSettings):
    """Everything the relay can be told; see config/relay.env.example."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True, env_ignore_empty=True)

    voucherify_api_url: str = "https://api.voucherify.io"
    voucherify_app_id: Annotated[str | None, BeforeValidator(lambda v: v.strip() or None if isinstance(v, str) else v)] = None
    voucherify_app_token: SecretStr | None = None
    poll_interval: float = Field(default=30.0, ge=0.05, le=86400)
    idle_poll_interval: float = Field(default=300.0, ge=0.05, le=86400)
    state_url: str = "sqlite:///./voucherify-relay.db"
    backfill: Duration | None = None
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None
    stuck_after: Duration = timedelta(hours=1)
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    projects: dict[str, ProjectSpec] = Field(default_factory=dict)  # RELAY_PROJECTS__<NAME>__*: see all_projects()
    api_budget_per_hour: int | None = Field(default=None, ge=2)
    api_budget_per_month: int | None = Field(default=None, ge=100)
    billing_cycle_day: int = Field(default=1, ge=1, le=28)
    pacing: Literal["progress", "adaptive", "fixed"] = "progress"
    api_timeout_s: float = Field(default=10.0, gt=0, le=120)
    api_max_attempts: int = Field(default=4, ge=1, le=10)
    # the documented 5,000-row results are well under 2 MiB; the cap keeps an endless body from exhausting memory
    api_max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024, le=1024 * 1024 * 1024)
    list_page_size: int = Field(default=100, ge=1, le=100)
    max_pages_per_cycle: int = Field(default=20, ge=1, le=1000)
    max_event_bytes: int = Field(default=262_144, ge=16_384, le=16_777_216)
    delivery_retry_max_delay: float = Field(default=300.0, gt=0, le=86400)
    delivery_max_age: Duration = timedelta(hours=24)
    retention: Duration = Field(default=timedelta(days=7), ge=timedelta(hours=1))
    http_listen: str = "127.0.0.1:9464"
    watch_token: SecretStr | None = None
    replica_id: str = Field(default_factory=default_replica_id)
    lease_ttl: Duration = Field(default=timedelta(seconds=10), ge=timedelta(seconds=1), le=timedelta(minutes=5))
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("voucherify_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            msg = "must be an http(s) URL such as https://api.voucherify.io or https://us1.api.voucherify.io"
            raise ValueError(msg)
        return value.rstrip("/")

    @field_validator("voucherify_app_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return reject_control_chars(SecretStr(value.get_secret_value().strip()))

    @field_validator("webhook_url", "slack_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else check_http_url(reject_control_chars(value))

    @field_validator("voucherify_api_url", "voucherify_app_id", "state_url", "watch_token", mode="before")
    @classmethod
    def _no_control_chars(cls, value: object) -> object:
        return reject_control_chars(value) if isinstance(value, str | SecretStr) else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return SinkSettings._whsec(value)  # noqa: SLF001 - same rule, one place

    @field_validator("log_level", "log_format", "pacing", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str) -> str:
        if not _REPLICA_ID.fullmatch(value):
            msg = "must be 1 to 64 characters of A-Z a-z 0-9 _ . - (it names the replica in logs and in the polling lease)"
            raise ValueError(msg)
        return value

    @field_validator("http_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: str) -> str:
        if value.startswith(POSTGRES_SCHEMES):
            return check_postgres_url(value)
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            msg = f"must be sqlite:///<path> (e.g. sqlite:///./voucherify-relay.db or sqlite:////var/lib/relay/state.db) or {_POSTGRES_FORM}"
            raise ValueError(msg)
        return value

    @field_validator("sinks", mode="before")
    @classmethod
    def _lower_names(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {str(name).lower(): spec for name, spec in value.items()}
        return value

    @field_validator("projects", mode="before")
    @classmethod
    def _project_names(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {check_project_name(str(name)): spec for name, spec in value.items()}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003 - the signature pydantic-settings calls
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - replaced by MappingEnvSource
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read only what load_settings hands over, so tests and the CLI agree."""
        return (init_settings,)

    @property
    def state_kind(self) -> Literal["sqlite", "postgres"]:
        """Return which store RELAY_STATE_URL selects."""
        return "postgres" if self.state_url.startswith(POSTGRES_SCHEMES) else "sqlite"

    @property
    def state_path(self) -> Path:
        """Return the SQLite file the state URL names (SQLite only)."""
        return Path(self.state_url.removeprefix("sqlite:///"))

    def state_display(self) -> str:
        """Name the state database for logs and `check`: the SQLite path, or the PostgreSQL URL without password or query."""
        return describe_postgres_url(self.state_url) if self.state_kind == "postgres" else str(self.state_path)

    def all_sinks(self) -> dict[str, SinkSettings]:
        """Return the named sinks plus the shortcuts (named ``webhook`` and ``slack``)."""
        sinks = dict(self.sinks)
        if self.webhook_url is not None:
            sinks.setdefault("webhook", SinkSettings(kind="webhook", url=self.webhook_url, secret=self.webhook_secret))
        if self.slack_webhook_url is not None:
            sinks.setdefault("slack", SinkSettings(kind="slack", url=self.slack_webhook_url))
        return sinks

    def all_projects(self) -> dict[str, ProjectSettings]:
        """Return every Voucherify project (the single-project variables are ``default``) with the global defaults applied."""
        return resolve_projects(self.projects, self)

    def secret_values(self) -> list[str]:
        """Return every secret string, for the log redactor."""
        values = [self.voucherify_app_token, self.webhook_secret, self.watch_token, *(p.app_token for p in self.projects.values())]
        if self.state_kind == "postgres" and (password := postgres_password(self.state_url)):
            values.append(SecretStr(password))
        for sink in self.all_sinks().values():
            values += [sink.secret, sink.token]
            # a sink URL is shown as display_url(); where that hides something, the hidden part may be a secret
            if sink.url is not None and sink.display_url() != sink.url.get_secret_value():
                values.append(sink.url)
        found = [v.get_secret_value() for v in values if v is not None]
        found.extend(s for v in list(found) for s in v.split() if len(s) >= 8)  # noqa: PLR2004
        return [v for v in found if len(v) >= 8]  # noqa: PLR2004 - short strings would redact ordinary words


class MappingEnvSource(EnvSettingsSource):
    """An environment source reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def load_settings(environ: Mapping[str, str] | None = None, *, require_api: bool = True, require_sink: bool = True) -> RelaySettings:
    """Parse the environment (and ``.env``) into settings, or raise ConfigError."""
    env = resolve_environment(dict(os.environ if environ is None else environ))
    try:
        values = MappingEnvSource(RelaySettings, env)()
        settings = RelaySettings(**values)
    except ValidationError as exc:
        raise _config_error(exc) from None
    except ValueError as exc:  # pydantic-settings could not decode a JSON value
        field = re.search(r'field "([a-z_]+)"', str(exc))
        variable = PREFIX + field.group(1).upper() if field else f"{PREFIX}*"
        raise ConfigError(variable, "is not valid JSON (or set its parts one by one: RELAY_SINKS__<NAME>__KIND, ...)") from None
    _check_requirements(settings, require_api=require_api, require_sink=require_sink)
    return settings


def resolve_environment(env: dict[str, str]) -> dict[str, str]:
    """Merge ``.env`` beneath the environment and read every ``RELAY_*_FILE``."""
    env_file = env.get(f"{PREFIX}ENV_FILE", ".env")
    if Path(env_file).is_file():
        for key, value in dotenv_values(env_file).items():
            if value is not None:
                env.setdefault(key, value)
    for key in [k for k in env if k.upper().startswith(PREFIX) and k.upper().endswith("_FILE")]:
        if key.upper() == f"{PREFIX}ENV_FILE":
            continue
        target = key[: -len("_FILE")]
        if env.get(target):
            raise ConfigError(key, f"set either {target} or {key}, not both")
        try:
            env[target] = Path(env[key]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read the file it names ({exc.strerror})") from None
        if "__" in key:  # a named sink's field: its model forbids unknown keys such as URL_FILE
            del env[key]
    return env


def _check_requirements(settings: RelaySettings, *, require_api: bool, require_sink: bool) -> None:
    single = bool(settings.voucherify_app_id) or settings.voucherify_app_token is not None
    if require_api and (single or not settings.projects) and not settings.voucherify_app_id:
        raise ConfigError(f"{PREFIX}VOUCHERIFY_APP_ID", "is required (Project settings > Application keys), or define RELAY_PROJECTS__<NAME>__APP_ID")
    if require_api and (single or not settings.projects) and settings.voucherify_app_token is None:
        raise ConfigError(f"{PREFIX}VOUCHERIFY_APP_TOKEN", "is required (or RELAY_VOUCHERIFY_APP_TOKEN_FILE)")
    _check_projects(settings)
    if settings.idle_poll_interval < settings.poll_interval:
        raise ConfigError(f"{PREFIX}IDLE_POLL_INTERVAL", f"must be at least RELAY_POLL_INTERVAL ({settings.poll_interval:g}s): it is the slow pace")
    for shortcut, name in (("WEBHOOK_URL", "webhook"), ("SLACK_WEBHOOK_URL", "slack")):
        if getattr(settings, shortcut.lower()) is not None and name in settings.sinks:
            raise ConfigError(f"{PREFIX}{shortcut}", f"a named sink {name!r} (RELAY_SINKS__{name.upper()}__*) is defined too: rename one")
    if settings.watch_token is not None and len(settings.watch_token.get_secret_value()) < 16:  # noqa: PLR2004
        raise ConfigError(f"{PREFIX}WATCH_TOKEN", "must be at least 16 characters (e.g. `openssl rand -hex 24`)")
    if settings.webhook_secret is not None and settings.webhook_url is None:
        raise ConfigError(f"{PREFIX}WEBHOOK_SECRET", "is set but RELAY_WEBHOOK_URL is not")
    if require_sink and not settings.all_sinks():
        raise ConfigError(f"{PREFIX}WEBHOOK_URL", "no sink configured: set RELAY_WEBHOOK_URL, RELAY_SLACK_WEBHOOK_URL or RELAY_SINKS__<NAME>__KIND/URL")


def _check_projects(settings: RelaySettings) -> None:
    projects = settings.all_projects()
    for name, sink in settings.sinks.items():
        unknown = [p for p in sink.projects or () if p not in projects]
        if unknown:
            raise ConfigError(
                f"{PREFIX}SINKS__{name.upper()}__PROJECTS", f"names project {unknown[0]!r}, which is not configured ({', '.join(projects) or 'none'})"
            )
    if settings.state_kind == "postgres" and set(projects) - {"default"}:
        variable = f"{PREFIX}PROJECTS__{next(p for p in projects if p != 'default').upper()}__APP_ID"
        raise ConfigError(variable, "named projects need a SQLite state database in this version (RELAY_STATE_URL=sqlite:///...)")


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors(include_url=False, include_input=False)[0]
    variable = env_name(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if field := re.match(r"(__[A-Z_]+): ", message):  # a sink's cross-field rule names the field it is about
        variable, message = variable + field.group(1), message[field.end() :]
    if first["type"] == "missing":
        message = "is required"
    return ConfigError(variable, message)


def env_name(loc: tuple[Any, ...]) -> str:
    """Map a pydantic error location to the variable a user sets."""
    parts = [str(p).upper() for p in loc if not str(p).startswith(("function-", "literal["))]
    return PREFIX + "__".join(parts) if parts else f"{PREFIX}*"
