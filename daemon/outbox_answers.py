"""What the dispatcher decided about each answer, kept until the outbox records it.

``Verdicts`` judges one send's answer with the delivery policy (delivered, retry at, dead,
gone), counts it and logs it; ``Answers`` collects the decisions of a sink's finished sends
until the dispatcher's writer records them together in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from daemon.delivery_policy import DeliveryPolicy, Verdict
from daemon.model import Delivery
from daemon.sinks import SendResult
from daemon.store import AttemptResults

log = structlog.get_logger("daemon.outbox")


@dataclass
class Answers:
    """Decided answers not yet recorded, written in one transaction."""

    delivered: list[int] = field(default_factory=list)
    retries: list[tuple[int, float, str]] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # claimed, not attempted: free them for other replicas

    def __len__(self) -> int:
        """Return how many rows these answers settle or release."""
        return len(self.delivered) + len(self.retries) + len(self.dead) + len(self.released)

    def rows(self) -> list[int]:
        """Return the row ids these answers touch."""
        return touched_rows(self)

    def take(self, other: AttemptResults) -> None:
        """Add answers that could not be written yet (they go first)."""
        self.delivered[:0], self.retries[:0], self.dead[:0], self.released[:0] = other.delivered, other.retries, other.dead, other.released

    def results(self, claims: dict[int, str]) -> AttemptResults:
        """Return the answers as the store records them, with the claim token of each row that has one."""
        held = {row: claims[row] for row in self.rows() if row in claims}
        return AttemptResults(delivered=self.delivered, retries=self.retries, dead=self.dead, released=self.released, claims=held)


def touched_rows(results: AttemptResults | Answers) -> list[int]:
    """Return the row ids some answers settle or release."""
    return [*results.delivered, *(r for r, _, _ in results.retries), *(r for r, _ in results.dead), *results.released]


def settled_count(results: AttemptResults) -> int:
    """Return how many attempts ``results`` records (released rows were not attempted)."""
    return len(results.delivered) + len(results.retries) + len(results.dead)


@dataclass
class DispatchStats:
    """Counters since start, for logs and metrics."""

    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0


class Verdicts:
    """Judge answers with the delivery policy; count and log each one."""

    def __init__(self, policy: DeliveryPolicy, *, on_result: Callable[[str, str], None] | None = None) -> None:
        self._policy = policy
        self._on_result = on_result
        self.gone: set[str] = set()  # sinks that answered 410: dead-letter their rows until restart
        self.stats = DispatchStats()

    def gone_result(self, sink: str) -> SendResult | None:
        """Return the stand-in answer for a sink that answered 410 earlier (None: send for real)."""
        if sink not in self.gone:
            return None
        return SendResult(delivered=False, status=None, detail="sink answered 410 Gone earlier; fix it, then `outbox replay --dead`", gone=True)

    def decide(self, delivery: Delivery, result: SendResult, answers: Answers, *, now: float) -> None:
        """Judge one answer and add the decision to ``answers``."""
        verdict = self._policy.decide(result, attempts=delivery.attempts, created_at=delivery.created_at, now=now)
        if verdict.outcome == "delivered":
            answers.delivered.append(delivery.row_id)
            self.stats.delivered += 1
            self._count(delivery.sink, "delivered")
            where = {"sink": delivery.sink, "project": delivery.project, "event_id": delivery.event_id, "action_id": delivery.action_id}
            log.debug("delivery.sent", **where, status=result.status)
        elif verdict.outcome == "gone":
            if delivery.sink not in self.gone:
                self.gone.add(delivery.sink)
                hint = "the receiver says this endpoint no longer exists; deliveries to it are dead-lettered until the relay restarts"
                log.error("sink.gone", sink=delivery.sink, detail=result.detail, hint=hint)
            self._dead(delivery, result.detail, answers, outcome="gone")
        elif verdict.outcome == "rejected":
            log.error("sink.misconfigured", sink=delivery.sink, detail=result.detail)
            self._dead(delivery, result.detail, answers, outcome="rejected")
        else:
            self._retry(delivery, result, verdict, answers, now=now)

    def _retry(self, delivery: Delivery, result: SendResult, verdict: Verdict, answers: Answers, *, now: float) -> None:
        self.stats.failed_attempts += 1
        if verdict.outcome == "expired":
            self._dead(delivery, f"{result.detail}; still failing after RELAY_DELIVERY_MAX_AGE", answers, outcome="expired")
            return
        answers.retries.append((delivery.row_id, now + verdict.delay_s, result.detail))
        self._count(delivery.sink, "retry")
        log.warning(
            "delivery.retry_scheduled",
            sink=delivery.sink,
            project=delivery.project,
            event_id=delivery.event_id,
            attempt=delivery.attempts + 1,
            caused_by=result.detail,
            retry_in_s=round(verdict.delay_s, 3),
        )

    def _dead(self, delivery: Delivery, reason: str, answers: Answers, *, outcome: str) -> None:
        answers.dead.append((delivery.row_id, reason))
        self.stats.dead += 1
        self._count(delivery.sink, outcome)
        log.error(
            "delivery.dead_lettered",
            sink=delivery.sink,
            project=delivery.project,
            event_id=delivery.event_id,
            action_id=delivery.action_id,
            reason=reason,
            row_id=delivery.row_id,
        )

    def _count(self, sink: str, outcome: str) -> None:
        if self._on_result:
            self._on_result(sink, outcome)
