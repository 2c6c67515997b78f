"""structlog set-up: JSON lines in production, a readable console on a TTY, no secrets.

Every rendered line passes through :class:`Redactor`, which replaces each configured
secret (app token, webhook secrets and URLs, Slack URLs) with ``***`` wherever it
appears, as a last line of defence behind code that never logs them on purpose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Redactor:
    """A structlog processor that masks known secret strings in every value."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, _logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Mask secrets in the event's values."""
        if self._secrets:
            for key, value in event_dict.items():
                event_dict[key] = self._mask(value)
        return event_dict

    def _mask(self, value: object) -> object:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        if isinstance(value, (list, tuple)):
            return [self._mask(v) for v in value]
        if isinstance(value, dict):
            return {k: self._mask(v) for k, v in value.items()}
        return value


def configure_logging(*, level: str = "info", fmt: str = "auto", secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Configure structlog and route the standard library's logs (APScheduler, aiohttp) through it."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    redact = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else structlog.processors.JSONRenderer()
    tail: list[Any] = [] if console else [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[*shared, *tail, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, *tail, redact],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        ),
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(LEVELS[level], logging.WARNING))
    # APScheduler warns on every skipped overlapping run; skipping is what we ask of it.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
