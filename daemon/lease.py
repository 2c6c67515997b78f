"""The polling lease port: which replica may poll Voucherify, judged by the database's clock.

A lease row (name, holder, term, expiry) rather than a session lock: session advisory
locks break behind a transaction-mode pooler (Oban #1488). ``acquire_or_renew`` grants
the lease when the caller holds it or it has expired (a new holder gets term + 1);
``release`` ends it at once so another replica takes over without waiting for the expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

POLL_LEASE = "poll"


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: who holds it, its term, and how long it stays valid by the database clock."""

    name: str
    holder: str
    term: int
    valid_for_s: float


class LeaseStore(Protocol):
    """Grants, renews and releases named leases."""

    async def acquire_or_renew(self, *, name: str, holder: str, ttl_s: float, acquire: bool = True) -> Lease | None:
        """Grant ``name`` to ``holder`` for ``ttl_s`` if it holds it, or (``acquire``) the lease expired; None otherwise."""
        ...

    async def heartbeat(self, *, holder: str, ttl_s: float) -> int:
        """Renew ``holder``'s membership for ``ttl_s``; return how many replicas are live, ``holder`` included."""
        ...

    async def leave(self, *, holder: str) -> None:
        """End ``holder``'s membership now."""
        ...

    async def release(self, lease: Lease) -> None:
        """End ``lease`` now, if it is still that holder's term."""
        ...

    async def close(self) -> None:
        """Close what the store opened."""
        ...


class SqliteLeaseStore:
    """Always grants term 1: the instance lock on the SQLite file already makes this the only process."""

    async def acquire_or_renew(self, *, name: str, holder: str, ttl_s: float, acquire: bool = True) -> Lease | None:  # noqa: ARG002 - nobody else asks
        """Grant the lease (nobody else can ask)."""
        return Lease(name=name, holder=holder, term=1, valid_for_s=ttl_s)

    async def heartbeat(self, *, holder: str, ttl_s: float) -> int:  # noqa: ARG002
        """One process: one member."""
        return 1

    async def leave(self, *, holder: str) -> None:
        """Nothing to end."""

    async def release(self, lease: Lease) -> None:
        """Nothing to release: the file lock goes with the process."""

    async def close(self) -> None:
        """Nothing to close."""
