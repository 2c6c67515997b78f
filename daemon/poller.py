"""One poll cycle: list -> detect -> fetch details -> store state + outbox in one transaction.

How the list is paged (newest pages first, then any backlog a capped cycle left) is in
:mod:`daemon.listing`; the backlog is committed with the cycle's state and events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from daemon.arrivals import Seen, seen_from
from daemon.detail_failures import DetailFailures
from daemon.detect import Change, diff, find_stuck, snapshot_from
from daemon.errors import AuthError, BudgetExhaustedError, LeaseLostError, NotFoundError, RateLimitedError, VoucherifyError
from daemon.eventsize import clip_text, fit_event
from daemon.listing import ListPlan, ListWalker, ListWindow, backlog_window_s
from daemon.model import DEFAULT_PROJECT, ActionSnapshot, Event, format_timestamp, in_project, parse_timestamp
from daemon.normalize import normalize, started_event, stuck_event
from daemon.progress import Observed, observed_from
from daemon.store import ActionStore, Cursor, CycleResult, Fence
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.poller")
OVERLAP = timedelta(minutes=10)
FIRST_RUN_LOOKBACK = timedelta(hours=24)
MAX_EVENT_BYTES = 262_144
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class PollReport:
    """What one cycle did, for the per-cycle log line, metrics and tests."""

    listed: int = 0
    pages: int = 0
    transitions: int = 0
    events: tuple[Event, ...] = ()  # what the cycle committed to the outbox, for metrics and logs
    api_calls: int = 0
    in_flight: int = 0
    ordered: bool = True
    first_run: bool = False
    skipped: str | None = None
    backlog_pages: int = 0  # pages this cycle read of an older window a capped cycle left
    backlog_window_s: float | None = None  # created_at seconds still owed after this cycle; None when caught up
    backlog_pages_owed: int | None = None  # estimate: the owed window at the density of the last full page
    in_flight_snapshots: tuple[ActionSnapshot, ...] = ()  # the in-flight actions as this cycle saw them (pacing, live messages)
    seen: Seen = field(default_factory=Seen)  # new actions' creation and finished actions' durations (progress pacing learns from them)

    @property
    def observed(self) -> tuple[Observed, ...]:
        """Return each in-flight action's progress and timestamps, as progress pacing reads them."""
        return tuple(observed_from(s) for s in self.in_flight_snapshots)


class Poller:
    """Runs poll cycles against one Voucherify project."""

    def __init__(
        self,
        *,
        client: VoucherifyClient,
        store: ActionStore,
        route: Callable[[Event], Sequence[str]],
        page_size: int = 100,
        max_pages: int = 20,
        backfill: timedelta | None = None,
        stuck_after: timedelta | None = None,
        clock: Callable[[], float] = time.time,
        max_event_bytes: int = MAX_EVENT_BYTES,
        detail_failures: DetailFailures | None = None,
        fence: Callable[[], Fence | None] = lambda: None,
        project: str = DEFAULT_PROJECT,
    ) -> None:
        self._client = client
        self._store = store
        self._route = route
        self._page_size = page_size
        self._max_pages = max_pages
        self._backfill = backfill
        self._stuck_after = stuck_after
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._detail_failures = detail_failures or DetailFailures()
        self._fence = fence  # the lease term this cycle polls under; raises LeaseLostError when not held
        self.project = project

    async def poll_once(self) -> PollReport:
        """Run one cycle; raise VoucherifyError if the list itself could not be read."""
        calls_before = self._client.requests_sent
        fence = self._fence()  # taken first: a cycle read under one term must not commit under another
        cursor = await self._store.load_cursor()
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        in_flight = await self._store.in_flight()
        plan = self._plan(cursor, now=now)
        window = await ListWalker(self._client, page_size=self._page_size, in_flight=in_flight).walk(plan)
        listed = self._snapshots(window.items.values())
        owed = self._snapshots(window.backlog_items.values())
        previous = {**in_flight, **await self._store.get_snapshots(s.id for s in [*listed, *owed])}
        details, gone, rechecked = await self._recheck_missing(in_flight, window.items.keys() | window.backlog_items.keys())
        backfill_since = now - self._backfill if self._backfill else None
        changes = diff(previous, [*listed, *rechecked], first_run=cursor.first_run, backfill_since=backfill_since, new_after=plan.horizon)
        changes += self._backlog_changes(previous, owed, cursor)
        kept, events = await self._events_for(changes, details, now=now)
        events += [] if cursor.first_run else self._started([c for c in changes if c.action_id in window.items], now=now)
        stuck, stuck_ids = await self._stuck([*listed, *rechecked], now=now, first_run=cursor.first_run)
        old_stuck, old_stuck_ids = await self._stuck(owed, now=now, first_run=cursor.first_run or _baseline(cursor))
        newest = _newest(cursor.newest_created_at, window.items.values())
        result = CycleResult(
            snapshots=[c.snapshot for c in kept],
            events=[(e, self._route(e)) for e in (in_project(e, self.project) for e in [*events, *stuck, *old_stuck])],
            forgotten=gone,
            stuck=[*stuck_ids, *old_stuck_ids],
            newest_created_at=newest if newest != cursor.newest_created_at else None,
            baseline_done=cursor.first_run,
            backlog=window.backlog,
            backlog_changed=window.backlog != cursor.backlog,
        )
        await self._store.commit_cycle(result, now=self._clock(), fence=fence)
        made = tuple(event for event, _ in result.events)
        report = self._report(window, cursor, current=[*listed, *owed, *rechecked], events=made, kept=len(kept), calls_before=calls_before)
        new, finished = [c.snapshot for c in kept if c.previous is None], [c.snapshot for c in kept if c.snapshot.terminal]
        since = window.read_since(plan.horizon) if cursor.first_run else None
        return replace(report, seen=seen_from(new=new, finished=finished, since=since))

    def _plan(self, cursor: Cursor, *, now: datetime) -> ListPlan:
        newest_seen = min(parse_timestamp(cursor.newest_created_at) or now, now)  # an entry dated in the future must not hide later ones
        return ListPlan(
            horizon=self._horizon(now, first_run=cursor.first_run, newest=cursor.newest_created_at),
            seen_through=newest_seen,
            backlog=cursor.backlog,
            max_pages=self._max_pages,
            started_at=self._clock(),
            baseline_since=(now - (self._backfill or timedelta(0))) if cursor.first_run else None,
        )

    def _backlog_changes(self, previous: Mapping[str, ActionSnapshot], owed: Sequence[ActionSnapshot], cursor: Cursor) -> list[Change]:
        """Diff the backlog's entries: new ones finished inside its window emit, a baseline's history does not."""
        if not owed:
            return []
        backlog = cursor.backlog
        since = parse_timestamp(backlog.baseline_since) if backlog else None
        new_after = parse_timestamp(backlog.owed_until) if backlog else None
        return diff(previous, owed, first_run=cursor.first_run or since is not None, backfill_since=since, new_after=new_after)

    def _report(
        self, window: ListWindow, cursor: Cursor, *, current: Sequence[ActionSnapshot], events: tuple[Event, ...], kept: int, calls_before: int
    ) -> PollReport:
        window_s = backlog_window_s(window.backlog)
        return PollReport(
            listed=len(window.items) + len(window.backlog_items),
            pages=window.pages,
            transitions=kept,
            events=events,
            api_calls=self._client.requests_sent - calls_before,
            in_flight=sum(1 for s in current if not s.terminal),
            ordered=window.ordered,
            first_run=cursor.first_run,
            backlog_pages=window.backlog_pages,
            backlog_window_s=window_s,
            backlog_pages_owed=window.pages_owed(window_s),
            in_flight_snapshots=tuple(s for s in current if not s.terminal),
        )

    def _started(self, changes: Sequence[Change], *, now: datetime) -> list[Event]:
        """Announce actions first seen in flight (after the baseline), from their list entries: no extra request."""
        fresh = [c.snapshot for c in changes if c.previous is None and not c.snapshot.terminal]
        return [fit_event(started_event(_list_entry(s), detected_at=now), max_bytes=self._max_event_bytes) for s in fresh]

    async def _stuck(self, current: Sequence[ActionSnapshot], *, now: datetime, first_run: bool) -> tuple[list[Event], list[str]]:
        """Report in-flight actions past RELAY_STUCK_AFTER once; on the first run only mark them (the baseline)."""
        found = find_stuck(current, now=now, stuck_after=self._stuck_after, notified=await self._store.stuck_notified())
        marked = [s.id for s, _ in found]
        if first_run:
            return [], marked
        events = [stuck_event(_list_entry(s), detected_at=now, stuck_for_s=age) for s, age in found]
        return [fit_event(e, max_bytes=self._max_event_bytes) for e in events], marked

    def _horizon(self, now: datetime, *, first_run: bool, newest: str | None) -> datetime:
        if first_run:
            return now - max(self._backfill or timedelta(0), FIRST_RUN_LOOKBACK)
        newest_seen = parse_timestamp(newest) or now
        return min(newest_seen, now) - OVERLAP  # an entry dated in the future must not hide later ones

    def _snapshots(self, items: Iterable[Mapping[str, Any]]) -> list[ActionSnapshot]:
        return [s for s in (snapshot_from(i) for i in items) if s is not None]

    async def _recheck_missing(
        self, in_flight: Mapping[str, ActionSnapshot], listed: Collection[str]
    ) -> tuple[dict[str, dict[str, Any]], list[str], list[ActionSnapshot]]:
        """Fetch by id the in-flight actions that fell out of the listed window."""
        details: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        for action_id in [i for i in in_flight if i not in listed]:
            try:
                details[action_id] = await self._client.get_action(action_id)
            except NotFoundError:
                log.warning("action.disappeared", action_id=action_id, hint="404 for an action we saw in flight; no event")
                gone.append(action_id)
            except (AuthError, LeaseLostError):
                raise
            except Exception as exc:  # noqa: BLE001 - a poison record affects only itself
                log.warning("action.recheck_failed", action_id=action_id, caused_by=_why(exc))
        return details, gone, self._snapshots(details.values())

    async def _events_for(self, changes: Sequence[Change], details: dict[str, dict[str, Any]], *, now: datetime) -> tuple[list[Change], list[Event]]:
        kept: list[Change] = []
        events: list[Event] = []
        for change in changes:
            if not change.emits:
                kept.append(change)
                continue
            event = await self._event_for(change, details, now=now)
            if event is not None:
                kept.append(change)
                events.append(event)
        return kept, events

    async def _event_for(self, change: Change, details: dict[str, dict[str, Any]], *, now: datetime) -> Event | None:
        """Fetch the full action once and normalize it; None leaves the change for the next cycle.

        Anything one action's detail raises (an error answer, an undecodable or odd body)
        stays with that action: it is logged and retried, and given up on per DetailFailures.
        """
        try:
            detail = details.get(change.action_id) or await self._client.get_action(change.action_id)
            event = fit_event(normalize(detail, detected_at=now), max_bytes=self._max_event_bytes)
        except NotFoundError:
            log.warning("action.detail_missing", action_id=change.action_id, hint="listed as finished but GET answered 404; event sent without result")
            return self._from_list(change, now=now, why="GET answered 404")
        except (AuthError, LeaseLostError):
            raise
        except (RateLimitedError, BudgetExhaustedError) as exc:  # the action is fine; our allowance is not
            log.warning("action.detail_deferred", action_id=change.action_id, caused_by=_why(exc), hint="retried next cycle")
            return None
        except Exception as exc:  # noqa: BLE001 - a poison record affects only itself
            return self._detail_failed(change, now=now, why=_why(exc))
        self._detail_failures.forget(change.action_id)
        return event

    def _detail_failed(self, change: Change, *, now: datetime, why: str) -> Event | None:
        finished_at = parse_timestamp(change.snapshot.updated_at)
        attempts, give_up = self._detail_failures.record(change.action_id, now=now, finished_at=finished_at)
        if not give_up:
            log.warning("action.detail_failed", action_id=change.action_id, attempt=attempts, caused_by=why, hint="retried next cycle")
            return None
        log.error("action.detail_given_up", action_id=change.action_id, attempts=attempts, caused_by=why, hint="event sent from the list entry, without result")
        return self._from_list(change, now=now, why=why)

    def _from_list(self, change: Change, *, now: datetime, why: str) -> Event:
        self._detail_failures.forget(change.action_id)
        event = normalize(_list_entry(change.snapshot), detected_at=now, detail_available=False)
        event.data["detail_error"] = why
        return fit_event(event, max_bytes=self._max_event_bytes)


def _why(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, VoucherifyError) else f"{type(exc).__name__}: {exc}"
    return clip_text(text, ERROR_CHARS)


def _list_entry(s: ActionSnapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "type": s.type,
        "status": s.status,
        "operation_status": s.operation_status,
        "progress": s.progress,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _created(entry: Mapping[str, Any]) -> datetime | None:
    return parse_timestamp(entry.get("created_at"))


def _newest(current: str | None, entries: Iterable[Mapping[str, Any]]) -> str | None:
    moments = [m for m in (_created(e) for e in entries) if m is not None]
    known = parse_timestamp(current)
    if known is not None:
        moments.append(known)
    return format_timestamp(max(moments)) if moments else current


def _baseline(cursor: Cursor) -> bool:
    return cursor.backlog is not None and cursor.backlog.baseline_since is not None
