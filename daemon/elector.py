"""The replica's side of the polling lease: one attempt at a time, judged by :mod:`daemon.leadership`.

The relay calls :meth:`Elector.attempt` on a loop and acts on the :class:`Change` it
returns (log, metrics, start or stop polling). The poller and the Voucherify client only
read: :meth:`Elector.fence` for the cycle's commit, :meth:`Elector.permit` before each
request. Timing uses the monotonic clock: a wall-clock jump cannot stretch the trust window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from daemon.errors import LeaseLostError, StoreError
from daemon.leadership import Change, LeaseTiming, Standing, attempt_timeout_s, expired, granted, next_attempt_in_s, refused
from daemon.lease import POLL_LEASE, Lease, LeaseStore
from daemon.store import Fence


class Gate(Protocol):
    """Whether this replica may try for one more lease now (project leases spread over replicas: :mod:`daemon.spread`)."""

    def turn(self) -> AbstractAsyncContextManager[bool]:
        """Wait for this replica's next follower attempt to be the only one under way; yield whether it may take a lease."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if this replica may take a lease again (its share grew or it lost one)."""
        ...


class _Open:
    """The gate of a replica that may take every lease (one project, or SQLite): no waiting, always yes."""

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        yield True

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Elector:
    """Holds, renews and releases this replica's polling lease."""

    def __init__(
        self,
        *,
        store: LeaseStore,
        holder: str,
        timing: LeaseTiming,
        fencing: bool,
        name: str = POLL_LEASE,
        monotonic: Callable[[], float] = time.monotonic,
        gate: Gate | None = None,
    ) -> None:
        self._store = store
        self._gate = gate or _Open()
        self._full = False  # the gate said no at this follower's last turn
        self.holder = holder
        self.timing = timing
        self._fencing = fencing  # False on SQLite: the file lock already makes one process
        self._name = name
        self._monotonic = monotonic
        self.standing = Standing()
        self.last_ok_at: float | None = None  # monotonic moment of the last answered attempt (the database round trip)
        self.last_error: str | None = None  # the last attempt's failure, None after one that was answered

    @property
    def store(self) -> LeaseStore:
        """The lease store this elector asks (shared by a relay's projects)."""
        return self._store

    async def attempt(self) -> Change:
        """Renew or try for the lease once; return what changed.

        A renewal goes straight to the store. A follower waits for its turn at the gate and
        judges the answer before the next follower's turn, so the replica's count of held
        leases is exact when the next one decides whether it may take a lease.
        """
        self.standing, lapsed = expired(self.standing, now=self._monotonic())
        if lapsed is not None:
            return lapsed
        if self.standing.term is not None:
            return await self._ask(acquire=True)
        async with self._gate.turn() as may_take:
            self._full = not may_take
            return await self._ask(acquire=may_take)

    async def _ask(self, *, acquire: bool) -> Change:
        sent_at = self._monotonic()
        timeout_s = attempt_timeout_s(self.standing, now=sent_at, timing=self.timing)
        try:
            ask = self._store.acquire_or_renew(name=self._name, holder=self.holder, ttl_s=self.timing.ttl_s, acquire=acquire)
            lease = await asyncio.wait_for(ask, timeout=timeout_s)
        except (StoreError, TimeoutError) as exc:
            self.last_error = str(exc) or f"no answer within {timeout_s:.1f}s"
            self.standing, change = refused(self.standing, reason="error" if isinstance(exc, StoreError) else "timeout")
            return change
        self.last_ok_at, self.last_error = self._monotonic(), None
        if lease is None:
            self.standing, change = refused(self.standing, reason="taken")
            return change
        self.standing, change = granted(self.standing, term=lease.term, valid_for_s=lease.valid_for_s, sent_at=sent_at, timing=self.timing)
        return change

    def pause_s(self) -> float:
        """Return how long to wait before the next attempt.

        A follower of a replica that holds its share of project leases asks only at the
        holder's pace (it may not take the lease anyway; the attempt keeps its readiness): the
        gate wakes it as soon as the replica may take one again.
        """
        if self.standing.term is None and self._full:
            return self.timing.renew_every_s
        return next_attempt_in_s(self.standing, timing=self.timing)

    async def wait(self) -> None:
        """Sleep until the next attempt is due (see ``pause_s``), or until the gate opens."""
        await self._gate.sleep(self.pause_s())

    def trusted(self) -> bool:
        """Whether this replica holds the lease and its trust window is still open."""
        return self.standing.trusted(self._monotonic())

    def permit(self) -> None:
        """Raise LeaseLostError unless a Voucherify request may start now (the client calls it before each one)."""
        if not self.trusted():
            msg = f"replica {self.holder} does not hold the polling lease (or its trust window closed): request not sent"
            raise LeaseLostError(msg)

    def fence(self) -> Fence | None:
        """Return the fence a cycle commits under (None on SQLite); raise LeaseLostError when not trusted."""
        self.permit()
        if not self._fencing or self.standing.term is None:
            return None
        return Fence(name=self._name, holder=self.holder, term=self.standing.term)

    async def release(self) -> int | None:
        """Give the lease up now so another replica takes over at once; return the released term (None: none held)."""
        term, self.standing = self.standing.term, Standing()
        if term is None:
            return None
        await self._store.release(Lease(name=self._name, holder=self.holder, term=term, valid_for_s=0.0))
        return term

    async def close(self) -> None:
        """Close the lease store's connection."""
        await self._store.close()
