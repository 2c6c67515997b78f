"""The dispatcher: claim due deliveries, send them, reschedule or dead-letter.

Each sink drains on its own task, so a slow sink (Slack, paced to one message a second)
never holds up another. Within a sink, ``max_concurrency`` workers each send one row after
another, taking the next from a read-ahead the drain claims again (on a task of its own)
when half of it is left: a send that finishes is followed at once by the next, and one slow
receiver request holds its own worker and nothing else. Answers are recorded in groups by
one writer per sink (:mod:`daemon.outbox_drain` has the sizes): no send waits for another's
answer, and a transaction is not paid per row. The next attempt time is persisted, so
backoff survives restarts; a row being sent when the process dies is simply due again (and
sent again with the same event id). Workers that find nothing due end; a kick (the tick,
a poll that made events, NOTIFY) brings them back while the drain still runs.

Every row a drain holds (claimed, in flight, or answered but not yet recorded) is passed
to ``claim_due(skip=...)``: on SQLite a row stays pending while it is sent, and this is what
keeps the drain from handing it out again. On a shared (PostgreSQL) outbox each claimed row
carries its claim token, and the answers are recorded with it; the drain extends the claims
it holds every ``extend_every_s`` (a third of the claim TTL), so a long send never outlives
its claim while a dead replica's claims come back within one TTL. Rows claimed but not
attempted (shutting down) are released, so another replica sends them at once.

Whether and when to try again is the tenacity policy in :mod:`daemon.delivery_policy`,
judged against the row's persisted attempt count and age (:mod:`daemon.outbox_answers`).

When answers cannot be recorded (a full disk, say), that sink stops claiming, lets its
sends in flight finish and keeps every answer in memory: its rows are still pending in the
database, so sending on would resend them. It tries to write them again with a capped
exponential backoff; once that works it goes on. ``stop()`` stops claiming, lets in-flight
sends finish within the grace period and records every answer it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import structlog

from daemon.delivery_policy import DeliveryPolicy
from daemon.errors import StoreError
from daemon.model import Delivery
from daemon.outbox_answers import DispatchStats, Verdicts, settled_count
from daemon.outbox_drain import SinkDrain
from daemon.sinks import SendResult, Sink
from daemon.store import CLAIM_TTL_S, AttemptResults, Outbox

log = structlog.get_logger("daemon.outbox")
STORE_BACKOFF_S = (1.0, 60.0)  # first and longest pause after answers could not be written
EXTEND_EVERY_S = CLAIM_TTL_S / 3  # a claim is extended twice before it could lapse, with room for a slow round trip


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """Answers a sink got but could not write yet, and when to try writing them again."""

    results: AttemptResults
    cause: str
    delay_s: float
    retry_at: float  # on time.monotonic()


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
        extend_every_s: float = EXTEND_EVERY_S,
    ) -> None:
        self._store = store
        self._sinks = sinks
        self._clock = clock
        self._on_store_failed = on_store_failed
        self._extend_every_s = extend_every_s
        self._verdicts = Verdicts(policy, on_result=on_result)
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._state: dict[str, SinkDrain] = {}
        self._sends: set[asyncio.Task[None]] = set()  # workers in the middle of a send
        self._unrecorded: dict[str, _Unrecorded] = {}
        self._closing = False

    @property
    def stats(self) -> DispatchStats:
        """Return the counters since start."""
        return self._verdicts.stats

    async def start(self) -> None:
        """Dead-letter rows left for sinks that are no longer configured."""
        orphaned = await self._store.dead_letter_unknown_sinks(self._sinks)
        if orphaned:
            log.error("outbox.orphaned_rows", count=orphaned, hint="their sink was removed from the configuration; see `outbox list --dead`")

    def kick(self) -> None:
        """Start draining every sink that is not draining already (a running drain claims again); return at once."""
        if self._closing:
            return
        for name, sink in self._sinks.items():
            task = self._drains.get(name)
            if task is None or task.done():
                self._state[name] = SinkDrain(name, sink)
                self._drains[name] = asyncio.create_task(self._drain(self._state[name]), name=f"drain-{name}")
            else:
                self._state[name].kicked = True
                self._staff(self._state[name])  # workers that found nothing due have ended: bring them back

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
            await self._record_held(name, self._unrecorded.pop(name))
        return sum(settled_count(u.results) for u in self._unrecorded.values())

    def cancel(self) -> int:
        """Cancel running drains (shutdown after the grace period); their rows stay due."""
        running = [t for t in self._drains.values() if not t.done()]
        for task in running:
            task.cancel()
        return len(running)

    async def _drain(self, drain: SinkDrain) -> None:
        helpers: list[asyncio.Task[None]] = []
        try:
            if not await self._retry_unrecorded(drain.name):
                return
            helpers = [asyncio.create_task(self._write_loop(drain)), asyncio.create_task(self._extend_loop(drain))]
            self._staff(drain)
            while drain.workers:  # a kick may add workers while the last ones finish
                await asyncio.wait(set(drain.workers))
            if drain.claimer is not None:  # workers stopped early (closing, a failed write): give back what it claims
                await asyncio.wait([drain.claimer])
            drain.release_queued()
            drain.finishing = True
            drain.ready.set()
            await helpers[0]
            if drain.failure is not None:
                self._hold(drain.name, drain.answers.results(drain.claim_tokens()), cause=drain.failure)
            elif drain.rows:
                self._log_drained(drain)
        except Exception:
            log.exception("dispatch.crashed", sink=drain.name)
        finally:
            for task in [*drain.workers, *helpers, *([drain.claimer] if drain.claimer else [])]:
                task.cancel()  # the drain itself was cancelled (shutdown past the grace): its rows stay due

    def _staff(self, drain: SinkDrain) -> None:
        """Run ``max_concurrency`` workers, each sending one row at a time."""
        while len(drain.workers) < drain.sink.max_concurrency and not self._closing and not drain.finishing:
            worker = asyncio.create_task(self._work(drain))
            drain.workers.add(worker)
            worker.add_done_callback(drain.workers.discard)

    async def _work(self, drain: SinkDrain) -> None:
        """Send rows one after another until nothing is due, the relay stops or answers cannot be written."""
        me = asyncio.current_task()
        assert me is not None  # noqa: S101 - always inside a task
        while (delivery := await self._next(drain)) is not None:
            drain.sending[me] = delivery
            self._sends.add(me)
            try:
                answer: SendResult | BaseException | None = await self._send(drain.sink, delivery)
            except asyncio.CancelledError as exc:  # cut off at shutdown: record the others' answers, release this row
                answer = exc
            except Exception as exc:  # noqa: BLE001 - a sink must not raise; if one does, its row is released and the drain goes on
                answer = exc
            finally:
                del drain.sending[me]
                self._sends.discard(me)
            self._answered(drain, delivery, answer)
            if isinstance(answer, asyncio.CancelledError):
                return

    async def _next(self, drain: SinkDrain) -> Delivery | None:
        """Return the next row to send, claiming more when the read-ahead runs low; None when there is nothing (more) to do."""
        while not self._closing and drain.failure is None:
            self._claim_ahead(drain)
            if drain.queued:
                return drain.queued.popleft()
            if drain.claimer is None:
                return None
            await asyncio.wait([drain.claimer])  # not ``await claimer``: a worker cut off must not cancel the claim
        drain.release_queued()
        return None

    def _claim_ahead(self, drain: SinkDrain) -> None:
        """Start a claim (on its own task, so sends go on meanwhile) when the read-ahead runs low."""
        if not (wanted := drain.claim_size()):
            return
        drain.kicked, drain.asked = False, wanted
        drain.claimer = asyncio.create_task(self._store.claim_due(now=self._clock(), limit=wanted, sink=drain.name, skip=list(drain.held)))
        drain.claimer.add_done_callback(partial(self._claimed, drain))

    def _claimed(self, drain: SinkDrain, claimer: asyncio.Task[list[Delivery]]) -> None:
        """Take a claim's rows; a claim the store refused counts as nothing due until the next kick."""
        error = None if claimer.cancelled() else claimer.exception()
        if error is not None and not isinstance(error, StoreError):
            log.error("dispatch.claim_crashed", sink=drain.name, caused_by=repr(error))
        elif error is not None:
            log.warning("dispatch.claim_failed", sink=drain.name, caused_by=str(error))
        drain.took([] if claimer.cancelled() or error is not None else claimer.result())

    async def _send(self, sink: Sink, delivery: Delivery) -> SendResult | None:
        if (gone := self._verdicts.gone_result(delivery.sink)) is not None:
            return gone
        if self._closing:
            return None
        return await sink.send(delivery)

    def _answered(self, drain: SinkDrain, delivery: Delivery, answer: SendResult | BaseException | None) -> None:
        """Decide on a finished send; a send not started (closing), cut off or crashed releases its row."""
        if isinstance(answer, SendResult):
            self._verdicts.decide(delivery, answer, drain.answers, now=self._clock())
        else:
            if isinstance(answer, Exception):
                log.error("delivery.crashed", sink=delivery.sink, project=delivery.project, event_id=delivery.event_id, caused_by=repr(answer))
            drain.answers.released.append(delivery.row_id)
        drain.noted()

    async def _write_loop(self, drain: SinkDrain) -> None:
        """Write waiting answers in groups (see :mod:`daemon.outbox_drain`) until the drain finishes or a write fails."""
        while True:
            if not drain.answers:
                if drain.finishing:
                    return
                drain.ready.clear()
                await drain.ready.wait()
                continue
            if (wait_s := drain.write_wait_s()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drain.full.wait(), wait_s)
            drain.written(await self._apply(drain.take_group()))
            if drain.failure is not None:
                return

    async def _extend_loop(self, drain: SinkDrain) -> None:
        """Push on the expiry of the claims this drain holds, every ``extend_every_s``."""
        while True:
            await asyncio.sleep(self._extend_every_s)
            if not (claims := drain.extendable()):
                continue
            try:
                await self._store.extend_claims(claims)
            except StoreError as exc:
                log.warning("dispatch.claims_not_extended", sink=drain.name, rows=len(claims), caused_by=str(exc))

    async def _apply(self, results: AttemptResults) -> str | None:
        """Record answers; return why they could not be (None: written)."""
        try:
            await self._store.apply_results(results, now=self._clock())
        except StoreError as exc:
            return str(exc)
        return None

    def _log_drained(self, drain: SinkDrain) -> None:
        duration_ms = round((time.monotonic() - drain.started) * 1000, 1)
        log.info("dispatch.drained", sink=drain.name, rows=drain.rows, claims=drain.claims, writes=drain.writes, duration_ms=duration_ms)

    async def _retry_unrecorded(self, name: str) -> bool:
        """Write answers held back by a store failure once their backoff has passed; True when none are left."""
        held = self._unrecorded.get(name)
        if held is None:
            return True
        if time.monotonic() < held.retry_at:
            return False
        return await self._record_held(name, self._unrecorded.pop(name))

    async def _record_held(self, name: str, held: _Unrecorded) -> bool:
        """Write answers held back by a store failure; on another failure hold them again with a longer pause."""
        cause = await self._apply(held.results)
        if cause is not None:
            self._hold(name, held.results, cause=cause, earlier=held)
            return False
        log.info("dispatch.store_recovered", sink=name, rows=settled_count(held.results))
        return True

    def _hold(self, name: str, results: AttemptResults, *, cause: str, earlier: _Unrecorded | None = None) -> None:
        delay = STORE_BACKOFF_S[0] if earlier is None else min(STORE_BACKOFF_S[1], earlier.delay_s * 2)
        self._unrecorded[name] = _Unrecorded(results=results, cause=cause, delay_s=delay, retry_at=time.monotonic() + delay)
        log.error("dispatch.store_failed", sink=name, caused_by=cause, retry_in_s=delay, hint="sending to this sink is paused until its results can be written")
        if self._on_store_failed:
            self._on_store_failed(name)
