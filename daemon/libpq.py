"""What libpq reads besides the URL: the passwords it may use, so the relay can hide them all.

libpq takes a password from the connection URL, else PGPASSWORD, else the password file
(PGPASSFILE, default ``~/.pgpass``). The log redactor and the PostgreSQL store's error
messages hide every one of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from daemon.urls import postgres_password


def libpq_passwords(url: str, environ: Mapping[str, str]) -> list[str]:
    r"""Return every password libpq may use for ``url``: the URL's own, PGPASSWORD, and each one in the password file.

    The password file is PGPASSFILE, else ``~/.pgpass``; its lines are
    ``host:port:database:user:password`` (``\:`` and ``\\`` escaped). All of its passwords are
    returned, not only the matching line's: they are for hiding, and over-hiding is harmless.
    """
    found = [p for p in (postgres_password(url), environ.get("PGPASSWORD")) if p]
    path = environ.get("PGPASSFILE") or (str(Path(environ["HOME"]) / ".pgpass") if environ.get("HOME") else None)
    try:
        text = Path(path).read_text(encoding="utf-8") if path else ""
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields = re.split(r"(?<!\\):", line, maxsplit=4)
            if len(fields) == 5 and fields[4]:  # noqa: PLR2004 - the file's five fields
                found.append(fields[4].replace("\\:", ":").replace("\\\\", "\\"))
    return found
