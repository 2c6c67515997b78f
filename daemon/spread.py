"""Spread project leases over the replicas: each holds about its fair share (issue 13).

Every replica renews a membership row (``member:<replica id>`` in the lease table) at the
followers' cadence (every 0.25 s at most: a cheap one-row statement, like one follower's
attempt), so a replica that stops or joins changes the others' shares within a fraction of
a second, not a renewal period (2 s at the default TTL); the answer is how many replicas are
live. A replica then takes free project leases only while it holds fewer than ``ceil(projects / replicas)`` (the
:class:`~daemon.elector.Gate` its electors ask), and when replicas join it hands over its
surplus one lease per heartbeat, so the others take them without a burst of hand-overs.
A follower of a replica at its share asks only at the holder's pace (it may not take the
lease anyway; asking keeps it ready) and is woken the moment the replica may take one again.
A dead replica's membership ends before its leases do (:data:`MEMBER_TTL_FRACTION`), so
the survivors' shares have grown by the time its projects come free: a failover moves
only its projects, within the lease TTL. The policy itself is pure, in :mod:`daemon.leadership`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog

from daemon.elector import Elector
from daemon.errors import StoreError
from daemon.leadership import MEMBER_TTL_FRACTION, LeaseTiming, fair_share, may_take, surplus
from daemon.lease import LeaseStore

log = structlog.get_logger("daemon.spread")


class Spreader:
    """Counts the live replicas, gates lease attempts at the fair share, hands over the surplus."""

    def __init__(self, store: LeaseStore, *, holder: str, timing: LeaseTiming, projects: int, on_members: Callable[[int], None] = lambda _: None) -> None:
        self._store = store
        self._holder = holder
        self._timing = timing
        self._projects = projects
        self._on_members = on_members
        self._electors: Sequence[Elector] = ()
        self._turns = asyncio.Lock()
        self._opened = asyncio.Event()  # set (and replaced) at each heartbeat while this replica may take a lease
        self.members = 1  # until the first heartbeat answers: this replica may take every lease (as a single replica would)
        self._task: asyncio.Task[None] | None = None

    @property
    def share(self) -> int:
        """How many project leases this replica may hold now."""
        return fair_share(self._projects, self.members)

    def held(self) -> int:
        """How many project leases this replica holds now."""
        return sum(1 for e in self._electors if e.standing.term is not None)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Let one follower attempt run at a time, in the order they asked; yield whether it may take a lease.

        The turns are first come, first served (an asyncio.Lock wakes its waiters in order), so
        every follower gets to try in each round of attempts. A slot reserved for the whole
        round trip instead went to the same follower every round: the electors retry in step,
        and one whose lease another replica holds kept the slot from the one whose lease was free.
        """
        async with self._turns:
            yield may_take(self.held(), self.share)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or until this replica may take a lease again (followers at its share sleep long)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), seconds)

    def _notice(self) -> None:
        """Wake every sleeping follower while this replica may take a lease.

        On every heartbeat, not only when the gate turns open: a follower whose turn began
        before the opening decided "full" and went to sleep after the wake-up; the next
        heartbeat wakes it (SIGTERM hand-overs once took a renewal period, 2 s, that way).
        """
        if may_take(self.held(), self.share):
            self._opened.set()
            self._opened = asyncio.Event()

    def start(self, electors: Sequence[Elector], *, hand_over: Callable[[Elector], Awaitable[None]]) -> None:
        """Start the heartbeat for these electors (the replica's projects)."""
        self._electors = electors
        self._task = asyncio.create_task(self._run(hand_over), name="spread")

    async def _run(self, hand_over: Callable[[Elector], Awaitable[None]]) -> None:
        while True:
            await self.beat(hand_over)
            await asyncio.sleep(self._timing.retry_every_s)

    async def beat(self, hand_over: Callable[[Elector], Awaitable[None]]) -> None:
        """Renew the membership, read how many replicas are live, and hand over one surplus lease if others joined."""
        try:
            members = await self._store.heartbeat(holder=self._holder, ttl_s=self._timing.ttl_s * MEMBER_TTL_FRACTION)
        except StoreError as exc:
            log.warning("spread.heartbeat_failed", caused_by=str(exc), hint="the lease attempts report the database; the share stays as it was")
            return
        if members != self.members:
            log.info("spread.members_changed", replicas=members, share=fair_share(self._projects, members), projects=self._projects)
            self.members = members
            self._on_members(members)
        if surplus(self.held(), self.share):
            held = [e for e in self._electors if e.standing.term is not None]
            await hand_over(held[-1])
        self._notice()

    async def stop(self) -> None:
        """Stop the heartbeat and end the membership, so the others' shares grow at once."""
        if self._task is not None:
            self._task.cancel()
        try:
            await self._store.leave(holder=self._holder)
        except StoreError as exc:
            log.warning("spread.leave_failed", caused_by=str(exc), hint="the membership ends by itself within the lease TTL")
