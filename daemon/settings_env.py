"""Where settings come from: the environment (a given mapping), ``.env`` beneath it, ``RELAY_*_FILE`` files, and the names errors report."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from daemon.errors import ConfigError
from daemon.sink_settings import PREFIX


class MappingEnvSource(EnvSettingsSource):
    """An environment source reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


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


def config_error(exc: ValidationError) -> ConfigError:
    """Turn pydantic's first error into the ConfigError naming the variable a user sets."""
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
