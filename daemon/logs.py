"""structlog set-up: JSON lines in production, a readable console on a TTY, no secrets.

Every rendered line passes through :class:`Redactor`, which replaces each configured
secret (app token, webhook secrets and URLs, Slack URLs) with ``***`` wherever it
appears, as a last line of defence behind code that never logs them on purpose.
Then :func:`clip_fields` cuts every string value to ``MAX_FIELD_CHARS`` (a hostile
peer's 1 MB id or body must not become a 1 MB line) and :class:`RepeatLimiter` lets
the same warning or error (logger, event, level) through at most ``REPEAT_LIMIT``
times per ``REPEAT_INTERVAL_S``, then reports the suppressed ones in one
``log.suppressed`` line with a count. Both apply to the standard library's lines
(aiohttp, asyncio, APScheduler) too.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from daemon.eventsize import clip_text

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MAX_FIELD_CHARS = 1000
MAX_ITEMS = 50
REPEAT_LIMIT = 20
REPEAT_INTERVAL_S = 60.0
MAX_KEYS = 1000
LIMITED_LEVELS = frozenset({"warning", "error", "critical", "exception"})


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


def clip_fields(_logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Clip long strings (and long lists) in every value: ``prefix…(+N chars)``."""
    for key, value in event_dict.items():
        if not key.startswith("_"):
            event_dict[key] = _clip(value, depth=0)
    return event_dict


def _clip(value: object, *, depth: int) -> object:
    if isinstance(value, str):
        return clip_text(value, MAX_FIELD_CHARS)
    if isinstance(value, bytes):
        return clip_text(value.decode(errors="replace"), MAX_FIELD_CHARS)
    if depth > 3 or not isinstance(value, (list, tuple, dict)):  # noqa: PLR2004 - structured log values are shallow
        return value
    if isinstance(value, dict):
        return {k: _clip(v, depth=depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    return [_clip(v, depth=depth + 1) for v in value[:MAX_ITEMS]]


class RepeatLimiter:
    """A structlog processor that drops repeats of one warning beyond a rate and later reports their count."""

    def __init__(self, *, limit: int = REPEAT_LIMIT, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._interval_s, self._clock = limit, interval_s, clock
        self._windows: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._reporting = False

    def __call__(self, _logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Pass our line, or raise DropEvent for a repeat over the limit."""
        key = (str(event_dict.get("logger", "")), str(event_dict.get("event", "")), str(event_dict.get("level", "")))
        if not self._allow(key):
            raise structlog.DropEvent
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass a standard library line (aiohttp, asyncio, APScheduler), or drop a repeat over the limit."""
        return self._allow((record.name, clip_text(str(record.msg), MAX_FIELD_CHARS), record.levelname.lower()))

    def _allow(self, key: tuple[str, str, str]) -> bool:
        if self._reporting:
            return True
        now = self._clock()
        self._report_expired(now)
        if key[2] not in LIMITED_LEVELS or (len(self._windows) >= MAX_KEYS and key not in self._windows):
            return True  # too many distinct lines to track: let them through rather than grow
        started, count = self._windows.get(key, (now, 0))
        self._windows[key] = (started, count + 1)
        return count < self._limit

    def _report_expired(self, now: float) -> None:
        expired = [(k, c) for k, (started, c) in self._windows.items() if now - started >= self._interval_s]
        for key, count in expired:
            del self._windows[key]
            if count > self._limit:
                self._report(key, count - self._limit)

    def _report(self, key: tuple[str, str, str], suppressed: int) -> None:
        self._reporting = True
        try:
            name, event, level = key
            structlog.get_logger("daemon.logs").warning(
                "log.suppressed", suppressed_event=event, logger=name or None, suppressed_level=level, count=suppressed, interval_s=self._interval_s
            )
        finally:
            self._reporting = False


def configure_logging(
    *, level: str = "info", fmt: str = "auto", secrets: Iterable[str] = (), stream: TextIO | None = None, limiter: RepeatLimiter | None = None
) -> None:
    """Configure structlog and route the standard library's logs (APScheduler, aiohttp) through it."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    redact = Redactor(secrets)
    limit = limiter or RepeatLimiter()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else structlog.processors.JSONRenderer()
    tail: list[Any] = [] if console else [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[*shared, *tail, redact, clip_fields, limit, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, *tail, redact, clip_fields],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        ),
    )
    handler.addFilter(limit)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(LEVELS[level], logging.WARNING))
    # APScheduler warns on every skipped overlapping run; skipping is what we ask of it.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
