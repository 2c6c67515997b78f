"""InstanceLock: one relay per state database, however the path names it.

The lock is an ``flock`` on the database file itself, so a symlink or a hard link to the
same file meets the same lock (a lock file beside the path would differ per name). On
Linux ``flock`` and SQLite's ``fcntl`` locks are independent. The descriptor stays open
until ``release()``: closing any descriptor of the file drops the process's ``fcntl``
locks on it, so release only after the store is closed.
"""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

from daemon.errors import StoreError

if TYPE_CHECKING:
    from pathlib import Path


class InstanceLock:
    """An exclusive lock on the database file, so two relays never share one outbox."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (creating an empty database file if there is none) or raise StoreError naming the file."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            msg = f"state database {self._path}: cannot open it to take the instance lock ({exc.strerror})"
            raise StoreError(msg) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            msg = f"another voucherify-relay is already running on this state database ({self._path.resolve()} is locked)"
            raise StoreError(msg) from None
        self._fd = fd

    def release(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
