"""Configuration: environment variables only (plus an optional ``.env`` file), parsed once.

Every secret may instead be read from a file named by ``<VARIABLE>_FILE`` (systemd
credentials, Docker secrets). Errors become :class:`ConfigError` naming the variable.
Secrets and URLs end up in HTTP headers and request lines, so control characters (CR, LF,
TAB, ...) in them are refused here rather than failing, or injecting a header, later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.errors import ConfigError
from daemon.libpq import libpq_passwords
from daemon.projects import ProjectSettings, ProjectSpec, check_project_name, resolve_projects
from daemon.settings_env import MappingEnvSource, config_error, resolve_environment
from daemon.sink_settings import (
    _POSTGRES_FORM,
    _REPLICA_ID,
    PREFIX,
    Duration,
    SinkSettings,
    check_http_url,
    check_postgres_url,
    default_replica_id,
    reject_control_chars,
)
from daemon.urls import POSTGRES_SCHEMES, describe_postgres_url, parse_listen

PROGRESS_POLL_INTERVAL_S = 26.0  # RELAY_POLL_INTERVAL's default under progress pacing: it follows actions that show no progress


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
    live_progress_interval: float | None = Field(default=None, ge=0.05, le=86400)  # with a slack_app sink: poll this often while in flight
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

    @model_validator(mode="after")
    def _fast_pace_default(self) -> RelaySettings:
        """RELAY_POLL_INTERVAL, unset, is 26 s under progress pacing (30 s under adaptive and fixed): see docs/performance.md."""
        if "poll_interval" not in self.model_fields_set and self.pacing == "progress":
            object.__setattr__(self, "poll_interval", PROGRESS_POLL_INTERVAL_S)
        return self

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

    def for_project(self, project: ProjectSettings) -> RelaySettings:
        """Return these settings as one project's poll loop reads them: its credentials, API URL, pace, budget, backfill and stuck limit."""
        return self.model_copy(
            update={
                "voucherify_api_url": project.api_url,
                "voucherify_app_id": project.app_id,
                "voucherify_app_token": project.app_token,
                "api_budget_per_hour": project.api_budget_per_hour,
                "poll_interval": project.poll_interval,
                "idle_poll_interval": project.idle_poll_interval,
                "backfill": project.backfill,
                "stuck_after": project.stuck_after,
            }
        )

    def secret_values(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Return every secret string, for the log redactor (libpq's PGPASSWORD and password file from ``environ``, by default the process's)."""
        values = [self.voucherify_app_token, self.webhook_secret, self.watch_token, *(p.app_token for p in self.projects.values())]
        if self.state_kind == "postgres":
            values += [SecretStr(p) for p in libpq_passwords(self.state_url, os.environ if environ is None else environ)]
        for sink in self.all_sinks().values():
            values += [sink.secret, sink.token]
            # a sink URL is shown as display_url(); where that hides something, the hidden part may be a secret
            if sink.url is not None and sink.display_url() != sink.url.get_secret_value():
                values.append(sink.url)
        found = [v.get_secret_value() for v in values if v is not None]
        found.extend(s for v in list(found) for s in v.split() if len(s) >= 8)  # noqa: PLR2004
        return [v for v in found if len(v) >= 8]  # noqa: PLR2004 - short strings would redact ordinary words


def load_settings(environ: Mapping[str, str] | None = None, *, require_api: bool = True, require_sink: bool = True) -> RelaySettings:
    """Parse the environment (and ``.env``) into settings, or raise ConfigError."""
    env = resolve_environment(dict(os.environ if environ is None else environ))
    try:
        values = MappingEnvSource(RelaySettings, env)()
        settings = RelaySettings(**values)
    except ValidationError as exc:
        raise config_error(exc) from None
    except ValueError as exc:  # pydantic-settings could not decode a JSON value
        field = re.search(r'field "([a-z_]+)"', str(exc))
        variable = PREFIX + field.group(1).upper() if field else f"{PREFIX}*"
        raise ConfigError(variable, "is not valid JSON (or set its parts one by one: RELAY_SINKS__<NAME>__KIND, ...)") from None
    _check_requirements(settings, require_api=require_api, require_sink=require_sink)
    return settings


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
