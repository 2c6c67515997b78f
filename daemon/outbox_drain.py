"""One sink's drain as the dispatcher keeps it: rows held, the read-ahead, sends, claims, answers and the writer.

The dispatcher (:mod:`daemon.outbox`) starts the tasks; this module keeps the bookkeeping
and answers its questions without I/O: how many rows to claim now, whether a group of answers
is due for writing, which claims to extend, when to wake up.

Sizes. The read-ahead covers ``READ_AHEAD_S`` of sending at the rate the drain has reached
(answers per second since it started), at least ``READ_AHEAD_PER_SLOT`` rows per send slot and
at most ``READ_AHEAD_MAX``; it is claimed again when half of it is left. So sends never wait
for a claim's round trip, even when a busy database takes tens of milliseconds to answer (a
webhook at 4,000 events/s holds 256 rows ahead), while a Slack sink paced to one message a
second holds 8. Each claim costs the database a statement that skips the rows other replicas
hold, so claims should not be small either: 50 ms instead of 100 ms cost three replicas about
1.5 times the PostgreSQL CPU per event (docs/performance.md).

Answers are written when ``WRITE_GROUP`` of them wait, when the oldest has waited
``WRITE_DELAY_S``, or when no send is in flight: one transaction per group, and a slow send
delays nobody's answer by more than the delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from daemon.model import Delivery
from daemon.outbox_answers import Answers, settled_count, touched_rows
from daemon.sinks import Sink
from daemon.store import AttemptResults

READ_AHEAD_S, READ_AHEAD_PER_SLOT, READ_AHEAD_MAX = 0.1, 8, 256
WRITE_GROUP, WRITE_DELAY_S = 64, 0.05


@dataclass
class SinkDrain:
    """One sink's drain: the rows it holds, its workers and their sends, answers waiting for the writer."""

    name: str
    sink: Sink
    held: dict[int, Delivery] = field(default_factory=dict)  # claimed and not yet recorded: never claimed again meanwhile
    queued: deque[Delivery] = field(default_factory=deque)  # claimed, not started yet (the read-ahead)
    workers: set[asyncio.Task[None]] = field(default_factory=set)  # at most ``max_concurrency``, each sending one row at a time
    sending: dict[asyncio.Task[None], Delivery] = field(default_factory=dict)
    answers: Answers = field(default_factory=Answers)
    answered_at: float = 0.0  # monotonic: when the oldest waiting answer came in (0: none waits)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # answers wait (or the drain is finishing): wake the writer
    full: asyncio.Event = field(default_factory=asyncio.Event)  # a whole group waits: write it without waiting out the delay
    finishing: bool = False  # no worker left: write what waits and end
    writing: AttemptResults | None = None
    failure: str | None = None  # answers could not be written: claim nothing more
    claimer: asyncio.Task[list[Delivery]] | None = None
    asked: int = 0  # rows the running claim asked for
    dry: bool = False  # the last claim came back short: nothing more is due until a kick
    kicked: bool = False  # rows were enqueued since the last claim started
    started: float = field(default_factory=time.monotonic)
    claims: int = 0
    writes: int = 0
    rows: int = 0
    answered: int = 0

    def claim_size(self) -> int:
        """Return how many rows to claim now (0: none), given the free slots, the queue and the rate reached."""
        limit = self.sink.max_concurrency
        rate = self.answered / max(1e-3, time.monotonic() - self.started)
        ahead = min(READ_AHEAD_MAX, max(READ_AHEAD_PER_SLOT * limit, round(rate * READ_AHEAD_S)))
        if self.claimer is not None or (self.dry and not self.kicked) or len(self.queued) > ahead // 2 or self.failure is not None:
            return 0
        return max(0, limit - len(self.sending) + ahead - len(self.queued))

    def took(self, claimed: list[Delivery]) -> None:
        """Hold and queue a claim's rows; a short answer means nothing more is due until the next kick."""
        self.claimer = None
        self.claims += 1
        self.dry = len(claimed) < self.asked
        self.held.update((d.row_id, d) for d in claimed)
        self.queued.extend(claimed)

    def release_queued(self) -> None:
        """Give back the rows claimed but not started (closing, or the answers cannot be written)."""
        if self.queued:
            self.answers.released.extend(d.row_id for d in self.queued)
            self.queued.clear()
            self.noted(answered=False)

    def noted(self, *, answered: bool = True) -> None:
        """Note an answer (or a release): count it, date the oldest waiting one, wake the writer."""
        self.answered += answered
        if not self.answered_at:
            self.answered_at = time.monotonic()
        if len(self.answers) >= WRITE_GROUP:
            self.full.set()
        self.ready.set()

    def write_wait_s(self) -> float:
        """Return how long the writer should still wait for a group to fill (0: write now)."""
        if self.finishing or not self.sending or len(self.answers) >= WRITE_GROUP:
            return 0.0
        return max(0.0, self.answered_at + WRITE_DELAY_S - time.monotonic())

    def claim_tokens(self, *, but: frozenset[int] = frozenset()) -> dict[int, str]:
        """Return the claim token of every held row that has one (PostgreSQL), except ``but``."""
        return {row: d.claim for row, d in self.held.items() if d.claim is not None and row not in but}

    def take_group(self) -> AttemptResults:
        """Take the waiting answers for the writer (and start waiting anew)."""
        self.writing, self.answers, self.answered_at = self.answers.results(self.claim_tokens()), Answers(), 0.0
        self.ready.clear()
        self.full.clear()
        return self.writing

    def written(self, cause: str | None) -> None:
        """Forget the rows a write recorded; after a failure keep its answers and claim nothing more."""
        results, self.writing = self.writing, None
        if results is None:
            return
        if cause is None:
            self.writes += 1
            self.rows += settled_count(results)
            for row in touched_rows(results):
                self.held.pop(row, None)
            return
        self.failure = cause
        self.answers.take(results)

    def extendable(self) -> dict[int, str]:
        """Return the claims to extend: every held row's, except the rows being written."""
        return self.claim_tokens(but=frozenset(self.writing.claims) if self.writing is not None else frozenset())
