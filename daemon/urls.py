"""PURE: URL and header-value hygiene shared by settings, the API client and the sinks.

Many receivers carry their secret in the URL path (``/hooks/catch/123/abcdef/``), so a URL
is shown as scheme, host, port and at most its first path segment; query strings and
user info are never shown.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

HIDDEN = "…"


def has_control_chars(value: str) -> bool:
    """Whether ``value`` holds a character below 0x20 or DEL (CR and LF would split an HTTP header)."""
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)  # noqa: PLR2004 - the ASCII control range


def origin_of(url: str) -> str:
    """Return ``scheme://host[:port]`` of ``url``, without user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def redact_url(url: str) -> str:
    """Return ``url`` safe to show: origin and at most the first path segment (``https://h/hooks/…``)."""
    parts = urlsplit(url)
    segments = parts.path.lstrip("/").split("/", 1)
    shown = f"/{segments[0]}" if segments[0] else ""
    hidden = len(segments) > 1 or bool(parts.query) or bool(parts.fragment)
    return origin_of(url) + shown + (f"/{HIDDEN}" if hidden else "")


def without_query(url: str) -> str:
    """Return ``url`` without user info, query string or fragment."""
    return origin_of(url) + urlsplit(url).path


def resolve_location(base_url: str, location: str | None) -> str:
    """Return the absolute target of a ``Location`` header (it may be relative to ``base_url``)."""
    if not location:
        return "(no Location header)"
    return urljoin(base_url, location.strip())
