"""Prometheus metrics: what the relay did, counted in its own registry.

``RelayMetrics`` owns a private ``CollectorRegistry`` (never the global one), so tests
can build as many as they like. The app calls small methods as things happen; outbox
depth and readiness are read through callables at scrape time, so they are never stale.
Scrapes run on the event loop thread (``render()`` is cheap), which keeps the SQLite
connection on the thread that opened it.

Labels carry only fixed vocabularies, sink and project names (identifiers the operator
chose) and Voucherify action types (clipped, and capped in number): never a URL, token or
secret. What one project's poll loop does is counted through :class:`ProjectMetrics`,
which labels every series with ``project``.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, GCCollector, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from daemon import __version__
from daemon.errors import AuthError, BudgetExhaustedError, LeaseLostError, RateLimitedError, StoreError, VoucherifyError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from daemon.poller import PollReport
    from daemon.store import OutboxStats

PREFIX = "voucherify_relay"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest() writes
POLL_FAILURE_REASONS = ("auth", "rate_limited", "budget", "api_error", "lease_lost", "store_error", "crashed")
POLL_OUTCOMES = ("success", *POLL_FAILURE_REASONS)
DELIVERY_RESULTS = ("delivered", "retry", "gone", "rejected", "expired", "unconfigured")
POLL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_ACTION_TYPES = 64  # 22 documented types plus room for new ones; past this, "OTHER"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_LABEL_MAX_CHARS = 64


def failure_reason(exc: BaseException) -> str:
    """Map what a poll cycle raised to its ``polls_total`` outcome."""
    for kind, reason in (
        (AuthError, "auth"),
        (RateLimitedError, "rate_limited"),
        (BudgetExhaustedError, "budget"),
        (VoucherifyError, "api_error"),
        (LeaseLostError, "lease_lost"),
        (StoreError, "store_error"),
    ):
        if isinstance(exc, kind):
            return reason
    return "crashed"


def clip_label(value: str | None, *, default: str = "none") -> str:
    """Return ``value`` reduced to a safe label: ``[A-Za-z0-9_.:-]``, at most 64 characters."""
    if not value:
        return default
    return _LABEL_UNSAFE.sub("_", value)[:_LABEL_MAX_CHARS]


class RelayMetrics:
    """Every metric the relay exports, in a registry of its own."""

    def __init__(self, *, version: str = __version__, clock: Callable[[], float] = time.time) -> None:
        # _created series double the series count and nothing alerts on them; the switch is
        # process-wide in prometheus-client, and this process exports only these metrics.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry()
        self.clock = clock
        self._action_types: set[str] = set()
        reg = self.registry
        ProcessCollector(registry=reg)  # process_* (CPU, memory, fds); needs /proc/stat, so no ProcSubset=pid
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        Info(PREFIX, "The running relay's version.", registry=reg).info({"version": version})
        self.polls = PromCounter(f"{PREFIX}_polls", "Poll cycles by project and outcome.", ["project", "outcome"], registry=reg)
        self.poll_duration = Histogram(f"{PREFIX}_poll_duration_seconds", "Time one poll cycle took.", ["project"], buckets=POLL_BUCKETS_S, registry=reg)
        self.api_requests = PromCounter(
            f"{PREFIX}_api_requests",
            "Requests sent to Voucherify by project, endpoint and status (or error kind).",
            ["project", "endpoint", "status"],
            registry=reg,
        )
        self.rate_limit_remaining = Gauge(
            f"{PREFIX}_api_rate_limit_remaining", "Voucherify's last X-Rate-Limit-Remaining (NaN until seen).", ["project"], registry=reg
        )
        self.transitions = PromCounter(f"{PREFIX}_transitions", "Action state changes detected.", ["project"], registry=reg)
        self.events = PromCounter(
            f"{PREFIX}_events",
            "Events made, by project, event type, outcome and action type.",
            ["project", "event_type", "outcome", "action_type"],
            registry=reg,
        )
        self.in_flight = Gauge(f"{PREFIX}_actions_in_flight", "Actions seen in progress in the last successful poll.", ["project"], registry=reg)
        self.deliveries = PromCounter(f"{PREFIX}_deliveries", "Delivery attempts by sink and result.", ["sink", "result"], registry=reg)
        self.store_write_failures = PromCounter(
            f"{PREFIX}_store_write_failures", "Batches of delivery results the state database refused (the sink pauses and retries).", ["sink"], registry=reg
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_poll_timestamp_seconds", "Unix time of the last successful poll (0 until one succeeds).", ["project"], registry=reg
        )
        self.list_backlog = Gauge(
            f"{PREFIX}_list_backlog_seconds", "Created_at window the list still owes after a capped cycle (0 when caught up).", ["project"], registry=reg
        )
        self.list_backlog_pages = Gauge(
            f"{PREFIX}_list_backlog_pages_owed",
            "Estimated list pages still owed: the window at the density of the last full page.",
            ["project"],
            registry=reg,
        )
        self.leader = Gauge(f"{PREFIX}_leader", "1 on the replica that holds the project's polling lease, 0 elsewhere.", ["project"], registry=reg)
        self.lease_term = Gauge(f"{PREFIX}_lease_term", "The project's polling lease term this replica last held (0: never held).", ["project"], registry=reg)
        self.replicas = Gauge(f"{PREFIX}_replicas", "Live replicas this one counts (membership heartbeats; 1 on SQLite).", registry=reg)
        self.replicas.set(1)
        self._projects: dict[str, ProjectMetrics] = {}

    def project(self, name: str) -> ProjectMetrics:
        """Return the series of project ``name`` (created at zero on first use, so alerts see them before anything happens)."""
        if name not in self._projects:
            self._projects[name] = ProjectMetrics(self, name)
        return self._projects[name]

    def observe_event(self, event_type: str, *, outcome: str | None, action_type: str | None, project: str) -> None:
        """Count one event made by a poll cycle."""
        labels = {"event_type": clip_label(event_type), "outcome": clip_label(outcome), "action_type": self._action_type(action_type)}
        self.events.labels(project=clip_label(project), **labels).inc()

    def declare_sinks(self, names: Iterable[str]) -> None:
        """Create every (sink, result) series at zero, so rates and alerts see them before the first delivery."""
        for name in names:
            for result in DELIVERY_RESULTS:
                self.deliveries.labels(sink=clip_label(name), result=result)
            self.store_write_failures.labels(sink=clip_label(name))

    def delivery_result(self, sink: str, outcome: str) -> None:
        """Count one delivery attempt's result (the Dispatcher's ``on_result`` callback)."""
        self.deliveries.labels(sink=clip_label(sink), result=clip_label(outcome)).inc()

    def store_write_failed(self, sink: str) -> None:
        """Count a batch of delivery results that could not be written (the Dispatcher's ``on_store_failed`` callback)."""
        self.store_write_failures.labels(sink=clip_label(sink)).inc()

    def watch(self, *, outbox_stats: Callable[[], OutboxStats], ready: Callable[[], tuple[bool, str]] | None = None) -> None:
        """Read outbox depth (and readiness) through these callables at every scrape."""
        self.registry.register(_StateCollector(outbox_stats, ready, self.clock))

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def _action_type(self, action_type: str | None) -> str:
        label = clip_label(action_type, default="UNKNOWN")
        if label not in self._action_types:
            if len(self._action_types) >= MAX_ACTION_TYPES:
                return "OTHER"
            self._action_types.add(label)
        return label


class ProjectMetrics:
    """What one project's poll loop and lease count: every series labelled ``project``."""

    def __init__(self, metrics: RelayMetrics, project: str) -> None:
        self._metrics = metrics
        self.project = project
        self._label = label = clip_label(project)
        self._api_seen: Counter[tuple[str, str]] = Counter()
        for outcome in POLL_OUTCOMES:
            metrics.polls.labels(project=label, outcome=outcome)
        metrics.rate_limit_remaining.labels(project=label).set(math.nan)
        for gauge in (metrics.leader, metrics.lease_term, metrics.in_flight, metrics.last_success, metrics.list_backlog, metrics.list_backlog_pages):
            gauge.labels(project=label)
        metrics.transitions.labels(project=label)

    def observe_poll(self, report: PollReport, *, duration_s: float) -> None:
        """Count a successful cycle: its duration, transitions, in-flight actions and the events it made."""
        m, label = self._metrics, self._label
        m.polls.labels(project=label, outcome="success").inc()
        m.poll_duration.labels(project=label).observe(duration_s)
        m.transitions.labels(project=label).inc(report.transitions)
        m.in_flight.labels(project=label).set(report.in_flight)
        m.list_backlog.labels(project=label).set(report.backlog_window_s or 0.0)
        m.list_backlog_pages.labels(project=label).set(report.backlog_pages_owed or 0)
        m.last_success.labels(project=label).set(m.clock())
        for event in report.events:
            m.observe_event(event.type, outcome=event.data.get("outcome"), action_type=event.data.get("type"), project=self.project)

    def set_leadership(self, *, leader: bool, term: int | None) -> None:
        """Record whether this replica holds the project's polling lease, and the term it holds or last held."""
        self._metrics.leader.labels(project=self._label).set(1 if leader else 0)
        if term is not None:
            self._metrics.lease_term.labels(project=self._label).set(term)

    def poll_failed(self, reason: str, *, duration_s: float | None = None) -> None:
        """Count a failed cycle; ``reason`` is one of POLL_FAILURE_REASONS (see ``failure_reason``)."""
        if reason not in POLL_FAILURE_REASONS:
            msg = f"unknown poll failure reason {reason!r}; use one of {', '.join(POLL_FAILURE_REASONS)}"
            raise ValueError(msg)
        self._metrics.polls.labels(project=self._label, outcome=reason).inc()
        if duration_s is not None:
            self._metrics.poll_duration.labels(project=self._label).observe(duration_s)

    def observe_api_calls(self, calls: Counter[tuple[str, str]]) -> None:
        """Add what the project client's cumulative ``calls`` counter gained since the last look."""
        for (endpoint, status), total in calls.items():
            seen = self._api_seen[(endpoint, status)]
            gained = total - seen if total >= seen else total  # a smaller total: a new client started from zero
            if gained:
                self._metrics.api_requests.labels(project=self._label, endpoint=clip_label(endpoint), status=clip_label(status)).inc(gained)
            self._api_seen[(endpoint, status)] = total

    def set_rate_limit_remaining(self, remaining: int | None) -> None:
        """Record Voucherify's last X-Rate-Limit-Remaining for this project; None means not seen (NaN)."""
        self._metrics.rate_limit_remaining.labels(project=self._label).set(math.nan if remaining is None else remaining)


class _StateCollector:
    """Gauges computed at scrape time from the store and the health source."""

    def __init__(self, outbox_stats: Callable[[], OutboxStats], ready: Callable[[], tuple[bool, str]] | None, clock: Callable[[], float]) -> None:
        self._outbox_stats = outbox_stats
        self._ready = ready
        self._clock = clock

    def describe(self) -> list[Metric]:
        """Name the families up front, so a scrape never has to open the store to register."""
        names = ["outbox_pending_deliveries", "dead_letters", "oldest_pending_delivery_age_seconds"] + (["ready"] if self._ready else [])
        return [GaugeMetricFamily(f"{PREFIX}_{name}", "") for name in names]

    def collect(self) -> Iterator[Metric]:
        """Yield outbox depth and readiness; a store that cannot answer yields no outbox figures."""
        if self._ready is not None:
            ok, _ = self._ready()
            yield GaugeMetricFamily(f"{PREFIX}_ready", "1 when /readyz answers 200.", value=1.0 if ok else 0.0)
        try:
            stats = self._outbox_stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is closing; absent() alerts catch it
            return
        oldest = stats.oldest_pending_created_at
        age_s = max(0.0, self._clock() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(f"{PREFIX}_outbox_pending_deliveries", "Deliveries waiting to be sent (due or backing off).", value=stats.pending)
        yield GaugeMetricFamily(f"{PREFIX}_dead_letters", "Deliveries on the dead-letter list.", value=stats.dead)
        yield GaugeMetricFamily(f"{PREFIX}_oldest_pending_delivery_age_seconds", "Age of the oldest pending delivery (0 when none).", value=age_s)
