"""InstanceLock: one relay per state database."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from daemon.errors import StoreError


class InstanceLock:
    """An exclusive lock beside the database, so two relays never share one outbox."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path.with_name(db_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming the file."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._path.open("a")
        except OSError as exc:
            msg = f"state directory {self._path.parent}: cannot create the lock file ({exc.strerror})"
            raise StoreError(msg) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            msg = f"another voucherify-relay is already running on this state database (lock {self._path} is held)"
            raise StoreError(msg) from None
        self._file = handle

    def release(self) -> None:
        """Release the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None
