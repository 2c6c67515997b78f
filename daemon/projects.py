"""Voucherify projects: ``RELAY_PROJECTS__<NAME>__*`` and the single-project variables as project ``default``.

``ProjectSpec`` is what a user sets for one named project; ``resolve_projects`` applies the
global defaults and returns one frozen :class:`ProjectSettings` per project. Setting the
single-project variables and ``RELAY_PROJECTS__DEFAULT__*`` together is a ConfigError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from daemon.errors import ConfigError
from daemon.model import DEFAULT_PROJECT

PROJECT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PREFIX = "RELAY_PROJECTS__"


def _duration(value: object) -> object:
    from daemon.sink_settings import parse_duration  # noqa: PLC0415 - settings imports this module

    return parse_duration(value)


class ProjectSpec(BaseModel):
    """One project as set: ``RELAY_PROJECTS__<NAME>__APP_ID``, ``__APP_TOKEN``, ``__API_URL``, ... (unset: the global value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_id: str
    app_token: SecretStr
    api_url: str | None = None
    api_budget_per_hour: int | None = Field(default=None, ge=2)
    poll_interval: float | None = Field(default=None, ge=0.05, le=86400)
    idle_poll_interval: float | None = Field(default=None, ge=0.05, le=86400)
    backfill: Annotated[timedelta | None, BeforeValidator(_duration)] = None
    stuck_after: Annotated[timedelta | None, BeforeValidator(_duration)] = None

    @field_validator("app_id", "api_url")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        from daemon.sink_settings import reject_control_chars  # noqa: PLC0415 - settings imports this module

        return None if value is None else reject_control_chars(value.strip())

    @field_validator("app_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        from daemon.sink_settings import reject_control_chars  # noqa: PLC0415

        return reject_control_chars(SecretStr(value.get_secret_value().strip()))

    @field_validator("api_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        from daemon.sink_settings import check_http_url  # noqa: PLC0415

        return None if value is None else check_http_url(SecretStr(value)).get_secret_value().rstrip("/")


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """One Voucherify project with the global defaults applied."""

    name: str
    app_id: str
    app_token: SecretStr
    api_url: str
    api_budget_per_hour: int | None
    poll_interval: float
    idle_poll_interval: float
    backfill: timedelta | None
    stuck_after: timedelta


class GlobalDefaults(Protocol):
    """The single-project settings a named project falls back to (RelaySettings)."""

    voucherify_api_url: str
    voucherify_app_id: str | None
    voucherify_app_token: SecretStr | None
    api_budget_per_hour: int | None
    poll_interval: float
    idle_poll_interval: float
    backfill: timedelta | None
    stuck_after: timedelta


def resolve_projects(specs: Mapping[str, ProjectSpec], defaults: GlobalDefaults) -> dict[str, ProjectSettings]:
    """Return every configured project by name, ``default`` (the single-project variables) first."""
    projects: dict[str, ProjectSettings] = {}
    if defaults.voucherify_app_id or defaults.voucherify_app_token is not None:
        if DEFAULT_PROJECT in specs:
            raise ConfigError(f"{_PREFIX}DEFAULT__APP_ID", "and RELAY_VOUCHERIFY_APP_ID/APP_TOKEN both define the project 'default': keep one style")
        projects[DEFAULT_PROJECT] = _single(defaults)
    for name, spec in specs.items():
        projects[name] = _named(name, spec, defaults)
    return projects


def project_variable(project: str, field: str) -> str:
    """Return the variable that sets ``field`` (APP_ID, APP_TOKEN, API_URL, ...) of ``project``, for messages."""
    return f"RELAY_VOUCHERIFY_{field}" if project == DEFAULT_PROJECT else f"{_PREFIX}{project.upper()}__{field}"


def check_project_name(name: str) -> str:
    """Return ``name`` lower-cased, or raise ValueError unless it is a safe identifier."""
    lowered = name.lower()
    if not PROJECT_NAME.fullmatch(lowered):
        msg = f"project name {name!r} must be 1 to 32 of a-z 0-9 _ starting with a letter (it keys state, metrics and event ids)"
        raise ValueError(msg)
    return lowered


def _single(defaults: GlobalDefaults) -> ProjectSettings:
    return ProjectSettings(
        name=DEFAULT_PROJECT,
        app_id=defaults.voucherify_app_id or "",
        app_token=defaults.voucherify_app_token or SecretStr(""),
        api_url=defaults.voucherify_api_url,
        api_budget_per_hour=defaults.api_budget_per_hour,
        poll_interval=defaults.poll_interval,
        idle_poll_interval=defaults.idle_poll_interval,
        backfill=defaults.backfill,
        stuck_after=defaults.stuck_after,
    )


def _named(name: str, spec: ProjectSpec, defaults: GlobalDefaults) -> ProjectSettings:
    poll = spec.poll_interval if spec.poll_interval is not None else defaults.poll_interval
    idle = spec.idle_poll_interval if spec.idle_poll_interval is not None else max(defaults.idle_poll_interval, poll)
    if idle < poll:
        raise ConfigError(f"{_PREFIX}{name.upper()}__IDLE_POLL_INTERVAL", f"must be at least the project's poll interval ({poll:g}s)")
    return ProjectSettings(
        name=name,
        app_id=spec.app_id,
        app_token=spec.app_token,
        api_url=spec.api_url or defaults.voucherify_api_url,
        api_budget_per_hour=spec.api_budget_per_hour if spec.api_budget_per_hour is not None else defaults.api_budget_per_hour,
        poll_interval=poll,
        idle_poll_interval=idle,
        backfill=spec.backfill if spec.backfill is not None else defaults.backfill,
        stuck_after=spec.stuck_after if spec.stuck_after is not None else defaults.stuck_after,
    )
