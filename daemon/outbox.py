"""The dispatcher: claim due deliveries, send them, reschedule or dead-letter.

Each sink drains on its own task, so a slow sink (Slack, paced to one message a
second) never holds up another. Within a sink, sends run concurrently up to its
``max_concurrency``. The next attempt time is persisted, so backoff survives
restarts; a row being sent when the process dies is simply due again (and sent again
with the same event id).

Whether and when to try again is the tenacity policy in :mod:`daemon.delivery_policy`,
judged against the row's persisted attempt count and age.

On a shared (PostgreSQL) outbox each claimed row carries its claim token, and the answers
are recorded with it; rows claimed but not attempted (shutting down) are released, so
another replica sends them at once instead of after the claim expires.

When the answers of a batch cannot be recorded (a full disk, say), that sink stops
sending: its claimed rows are still pending in the database, so sending on would resend
them every second. It keeps the answers in memory and tries to write them again with a
capped exponential backoff; once that works it goes on. ``stop()`` stops claiming, lets
in-flight sends finish within the grace period and records every answer it got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from daemon.delivery_policy import DeliveryPolicy, Verdict
from daemon.errors import StoreError
from daemon.model import Delivery
from daemon.sinks import SendResult, Sink
from daemon.store import AttemptResults, Outbox

log = structlog.get_logger("daemon.outbox")
STORE_BACKOFF_S = (1.0, 60.0)  # first and longest pause after the results of a batch could not be written


@dataclass
class _Plan:
    """What a batch of attempts decided, written in one transaction."""

    delivered: list[int] = field(default_factory=list)
    retries: list[tuple[int, float, str]] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # claimed, not attempted: free them for other replicas
    claims: dict[int, str] = field(default_factory=dict)

    def results(self) -> AttemptResults:
        """Return the batch's answers as the store records them."""
        return AttemptResults(delivered=self.delivered, retries=self.retries, dead=self.dead, released=self.released, claims=self.claims)


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """Answers a sink got but could not write yet, and when to try writing them again."""

    results: AttemptResults
    cause: str
    delay_s: float
    retry_at: float  # on time.monotonic()


@dataclass
class DispatchStats:
    """Counters since start, for logs and metrics."""

    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0


class Dispatcher:
    """Sends what the outbox holds to the configured sinks."""

    def __init__(
        self,
        *,
        store: Outbox,
        sinks: Mapping[str, Sink],
        policy: DeliveryPolicy,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] | None = None,
        on_store_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._sinks = sinks
        self._policy = policy
        self._clock = clock
        self._on_result = on_result
        self._on_store_failed = on_store_failed
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[SendResult | None]] = set()
        self._unrecorded: dict[str, _Unrecorded] = {}
        self._gone: set[str] = set()
        self._closing = False
        self.stats = DispatchStats()

    async def start(self) -> None:
        """Dead-letter rows left for sinks that are no longer configured."""
        orphaned = await self._store.dead_letter_unknown_sinks(self._sinks)
        if orphaned:
            log.error("outbox.orphaned_rows", count=orphaned, hint="their sink was removed from the configuration; see `outbox list --dead`")

    def kick(self) -> None:
        """Start draining every sink that is not draining already; return at once."""
        if self._closing:
            return
        for name, sink in self._sinks.items():
            task = self._drains.get(name)
            if task is None or task.done():
                self._drains[name] = asyncio.create_task(self._drain(name, sink), name=f"drain-{name}")

    async def dispatch_once(self) -> None:
        """Drain every sink until nothing is due (tests, send-test)."""
        self.kick()
        await self.wait_idle()

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait for running drains; return False if some were still running after ``timeout_s``."""
        running = [t for t in self._drains.values() if not t.done()]
        if not running:
            return True
        _, pending = await asyncio.wait(running, timeout=timeout_s)
        return not pending

    def store_failure(self) -> str | None:
        """Return why delivery results cannot be written now (None when they can)."""
        return next((u.cause for u in self._unrecorded.values()), None)

    async def stop(self, *, grace_s: float) -> int:
        """Stop claiming; let in-flight sends finish within ``grace_s``; record their answers; return how many were cut off."""
        self._closing = True
        if await self.wait_idle(grace_s):
            return 0
        cut = [task for task in self._sends if not task.done()]
        for task in cut:
            task.cancel()  # the drain still records the answers it has, then ends
        if not await self.wait_idle(grace_s):
            self.cancel()
            await self.wait_idle()
        return len(cut)

    async def flush_unrecorded(self) -> int:
        """Try once more to write answers held back by a store failure; return how many rows stay unrecorded."""
        for name in list(self._unrecorded):
            await self._record(name, self._unrecorded[name].results)
        return sum(len(u.results.delivered) + len(u.results.retries) + len(u.results.dead) for u in self._unrecorded.values())

    def cancel(self) -> int:
        """Cancel running drains (shutdown after the grace period); their rows stay due."""
        running = [t for t in self._drains.values() if not t.done()]
        for task in running:
            task.cancel()
        return len(running)

    async def _drain(self, name: str, sink: Sink) -> None:
        limit = asyncio.Semaphore(sink.max_concurrency)
        try:
            if not await self._retry_unrecorded(name):
                return
            while not self._closing and (batch := await self._store.claim_due(now=self._clock(), limit=self._policy.batch_size, sink=name)):
                started = time.monotonic()
                plan = await self._attempt(sink, batch, limit)
                if not await self._record(name, plan.results()):
                    return
                log.info(
                    "dispatch.batch",
                    sink=name,
                    sent=len(plan.delivered),
                    retried=len(plan.retries),
                    dead=len(plan.dead),
                    duration_ms=round((time.monotonic() - started) * 1000, 1),
                )
        except Exception:
            log.exception("dispatch.crashed", sink=name)

    async def _attempt(self, sink: Sink, batch: list[Delivery], limit: asyncio.Semaphore) -> _Plan:
        """Send a batch; decide on every answer. A send not started (closing) or cut off leaves its row untouched."""
        sends = [asyncio.create_task(self._send(sink, d, limit)) for d in batch]
        self._sends.update(sends)
        try:
            answers = await asyncio.gather(*sends, return_exceptions=True)
        finally:
            self._sends.difference_update(sends)
        plan, now = _Plan(claims={d.row_id: d.claim for d in batch if d.claim is not None}), self._clock()
        for delivery, answer in zip(batch, answers, strict=True):
            if isinstance(answer, SendResult):
                self._decide(delivery, answer, plan, now=now)
                continue
            if isinstance(answer, Exception):
                log.error("delivery.crashed", sink=delivery.sink, event_id=delivery.event_id, caused_by=repr(answer))
            plan.released.append(delivery.row_id)
        return plan

    async def _send(self, sink: Sink, delivery: Delivery, limit: asyncio.Semaphore) -> SendResult | None:
        if delivery.sink in self._gone:
            return SendResult(delivered=False, status=None, detail="sink answered 410 Gone earlier; fix it, then `outbox replay --dead`", gone=True)
        async with limit:
            if self._closing:
                return None
            return await sink.send(delivery)

    async def _retry_unrecorded(self, name: str) -> bool:
        """Write answers held back by a store failure once their backoff has passed; True when none are left."""
        held = self._unrecorded.get(name)
        if held is None:
            return True
        if time.monotonic() < held.retry_at:
            return False
        return await self._record(name, held.results)

    async def _record(self, name: str, results: AttemptResults) -> bool:
        """Write a batch's answers; on a store failure hold them and pause this sink. Return whether they were written."""
        try:
            await self._store.apply_results(results, now=self._clock())
        except StoreError as exc:
            self._hold(name, results, cause=str(exc))
            return False
        if self._unrecorded.pop(name, None) is not None:
            log.info("dispatch.store_recovered", sink=name, rows=len(results.delivered) + len(results.retries) + len(results.dead))
        return True

    def _hold(self, name: str, results: AttemptResults, *, cause: str) -> None:
        earlier = self._unrecorded.get(name)
        delay = STORE_BACKOFF_S[0] if earlier is None else min(STORE_BACKOFF_S[1], earlier.delay_s * 2)
        self._unrecorded[name] = _Unrecorded(results=results, cause=cause, delay_s=delay, retry_at=time.monotonic() + delay)
        log.error("dispatch.store_failed", sink=name, caused_by=cause, retry_in_s=delay, hint="sending to this sink is paused until its results can be written")
        if self._on_store_failed:
            self._on_store_failed(name)

    def _decide(self, delivery: Delivery, result: SendResult, plan: _Plan, *, now: float) -> None:
        verdict = self._policy.decide(result, attempts=delivery.attempts, created_at=delivery.created_at, now=now)
        if verdict.outcome == "delivered":
            plan.delivered.append(delivery.row_id)
            self.stats.delivered += 1
            self._count(delivery.sink, "delivered")
            log.debug("delivery.sent", sink=delivery.sink, event_id=delivery.event_id, action_id=delivery.action_id, status=result.status)
        elif verdict.outcome == "gone":
            if delivery.sink not in self._gone:
                self._gone.add(delivery.sink)
                hint = "the receiver says this endpoint no longer exists; deliveries to it are dead-lettered until the relay restarts"
                log.error("sink.gone", sink=delivery.sink, detail=result.detail, hint=hint)
            self._dead(delivery, result.detail, plan, outcome="gone")
        elif verdict.outcome == "rejected":
            log.error("sink.misconfigured", sink=delivery.sink, detail=result.detail)
            self._dead(delivery, result.detail, plan, outcome="rejected")
        else:
            self._retry(delivery, result, verdict, plan, now=now)

    def _retry(self, delivery: Delivery, result: SendResult, verdict: Verdict, plan: _Plan, *, now: float) -> None:
        self.stats.failed_attempts += 1
        if verdict.outcome == "expired":
            self._dead(delivery, f"{result.detail}; still failing after RELAY_DELIVERY_MAX_AGE", plan, outcome="expired")
            return
        plan.retries.append((delivery.row_id, now + verdict.delay_s, result.detail))
        self._count(delivery.sink, "retry")
        log.warning(
            "delivery.retry_scheduled",
            sink=delivery.sink,
            event_id=delivery.event_id,
            attempt=delivery.attempts + 1,
            caused_by=result.detail,
            retry_in_s=round(verdict.delay_s, 3),
        )

    def _dead(self, delivery: Delivery, reason: str, plan: _Plan, *, outcome: str) -> None:
        plan.dead.append((delivery.row_id, reason))
        self.stats.dead += 1
        self._count(delivery.sink, outcome)
        log.error("delivery.dead_lettered", sink=delivery.sink, event_id=delivery.event_id, action_id=delivery.action_id, reason=reason, row_id=delivery.row_id)

    def _count(self, sink: str, outcome: str) -> None:
        if self._on_result:
            self._on_result(sink, outcome)
