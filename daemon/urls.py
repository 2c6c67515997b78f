"""PURE: URL, address and header-value hygiene shared by settings, the API client and the sinks.

Many receivers carry their secret in the URL path (``/hooks/catch/123/abcdef/``), so a URL
is shown as scheme, host, port and at most its first path segment; query strings and
user info are never shown.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urljoin, urlsplit

HIDDEN = "…"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_LISTEN_HELP = "must be HOST:PORT (127.0.0.1:9464, 0.0.0.0:9464, [::1]:9464, or :9464 for every interface) or 'off'"


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def describe_postgres_url(url: str) -> str:
    """Return ``postgresql://user@host:port/dbname``: a database URL without its password or query (which may hold one)."""
    try:
        parts = urlsplit(url)
        user = f"{unquote(parts.username)}@" if parts.username else ""
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"postgresql://{user}{host}{port}{parts.path}"


def postgres_password(url: str) -> str | None:
    """Return the password a postgresql:// URL carries (in its user info or a ``password`` parameter), if any."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return None
    if password:
        return unquote(password)
    found = re.search(r"(?:^|&)password=([^&]*)", parts.query)
    return unquote(found.group(1)) if found and found.group(1) else None


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


def parse_listen(value: str) -> tuple[str, int] | None:
    """Parse ``RELAY_HTTP_LISTEN``: ``(host, port)``, host ``""`` for every interface; None for ``off`` or empty."""
    text = value.strip()
    if text.lower() in {"", "off"}:
        return None
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit() or int(port_text) > 65535:  # noqa: PLR2004 - the largest TCP port
        raise ValueError(f"{_LISTEN_HELP}: {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ipv6(host):
            raise ValueError(f"{_LISTEN_HELP}: {value!r} (not an IPv6 address)")
    elif _is_ipv6(host):
        raise ValueError(f"{_LISTEN_HELP}: {value!r} (put an IPv6 address in brackets: [::1]:9464)")
    elif host and not _HOSTNAME.match(host):
        raise ValueError(f"{_LISTEN_HELP}: {value!r}")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
