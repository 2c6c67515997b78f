"""One poll cycle: list -> detect -> fetch details -> store state + outbox in one transaction.

List paging. The docs state neither the list's order nor whether ``end_date`` is
inclusive; they say only that it limits results to actions *scheduled before* it.
We assume newest first by ``created_at`` and page backwards with ``end_date`` set to
the oldest ``created_at`` on the page plus 1 ms, so the next page starts at (and
repeats) that item whether the bound is inclusive or exclusive; ids are
de-duplicated. We stop once a page reaches the window earlier polls covered (their
newest ``created_at`` minus an overlap) or ``has_more`` is false. Every page is
checked: if it is not newest first we log it and keep paging to the end of the list
(bounded by RELAY_MAX_PAGES_PER_CYCLE) instead of trusting the horizon.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import structlog

from daemon.detail_failures import DetailFailures
from daemon.detect import Change, diff, find_stuck, snapshot_from
from daemon.errors import AuthError, BudgetExhaustedError, NotFoundError, RateLimitedError, VoucherifyError
from daemon.eventsize import clip_text, fit_event
from daemon.model import ActionSnapshot, Event, format_timestamp, parse_timestamp
from daemon.normalize import normalize, stuck_event
from daemon.store import CycleResult, StateStore
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
    events: int = 0
    api_calls: int = 0
    in_flight: int = 0
    ordered: bool = True
    first_run: bool = False
    skipped: str | None = None


@dataclass(frozen=True, slots=True)
class ListWindow:
    """The de-duplicated list entries one cycle saw."""

    items: dict[str, dict[str, Any]]
    pages: int
    ordered: bool


class Poller:
    """Runs poll cycles against one Voucherify project."""

    def __init__(
        self,
        *,
        client: VoucherifyClient,
        store: StateStore,
        route: Callable[[Event], Sequence[str]],
        page_size: int = 100,
        max_pages: int = 20,
        backfill: timedelta | None = None,
        stuck_after: timedelta | None = None,
        clock: Callable[[], float] = time.time,
        max_event_bytes: int = MAX_EVENT_BYTES,
        detail_failures: DetailFailures | None = None,
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

    async def poll_once(self) -> PollReport:
        """Run one cycle; raise VoucherifyError if the list itself could not be read."""
        calls_before = self._client.requests_sent
        cursor = self._store.load_cursor()
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        horizon = self._horizon(now, first_run=cursor.first_run, newest=cursor.newest_created_at)
        in_flight = self._store.in_flight()
        window = await self._list_window(horizon, in_flight)
        listed = self._snapshots(window.items.values())
        previous = {**in_flight, **self._store.get_snapshots(s.id for s in listed)}
        details, gone, rechecked = await self._recheck_missing(in_flight, window.items)
        changes = diff(
            previous,
            [*listed, *rechecked],
            first_run=cursor.first_run,
            backfill_since=now - self._backfill if self._backfill else None,
            new_after=horizon,
        )
        kept, events = await self._events_for(changes, details, now=now)
        stuck, stuck_ids = self._stuck([*listed, *rechecked], now=now, first_run=cursor.first_run)
        newest = _newest(cursor.newest_created_at, window.items.values())
        result = CycleResult(
            snapshots=[c.snapshot for c in kept],
            events=[(e, self._route(e)) for e in [*events, *stuck]],
            forgotten=gone,
            stuck=stuck_ids,
            newest_created_at=newest if newest != cursor.newest_created_at else None,
            baseline_done=cursor.first_run,
        )
        self._store.commit_cycle(result, now=self._clock())
        return PollReport(
            listed=len(window.items),
            pages=window.pages,
            transitions=len(kept),
            events=len(events) + len(stuck),
            api_calls=self._client.requests_sent - calls_before,
            in_flight=sum(1 for s in [*listed, *rechecked] if not s.terminal),
            ordered=window.ordered,
            first_run=cursor.first_run,
        )

    def _stuck(self, current: Sequence[ActionSnapshot], *, now: datetime, first_run: bool) -> tuple[list[Event], list[str]]:
        """Report in-flight actions past RELAY_STUCK_AFTER once; on the first run only mark them (the baseline)."""
        found = find_stuck(current, now=now, stuck_after=self._stuck_after, notified=self._store.stuck_notified())
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

    async def _list_window(self, horizon: datetime, in_flight: Mapping[str, ActionSnapshot]) -> ListWindow:
        """Page backwards until the horizon (and past it while that is cheaper than GETs by id)."""
        items: dict[str, dict[str, Any]] = {}
        end_date: str | None = None
        pages, ordered = 0, True
        while True:
            page = await self._client.list_page(limit=self._page_size, end_date=end_date)
            pages += 1
            entries = [a for a in page.actions if isinstance(a, dict) and isinstance(a.get("id"), str) and a["id"]]
            _warn_invalid(len(page.actions) - len(entries))
            fresh = [a for a in entries if a["id"] not in items]
            items.update((a["id"], a) for a in fresh)
            if ordered and not _newest_first(entries):
                ordered = False
                log.warning("list.unordered", hint="list page is not newest first; scanning the whole list this cycle")
            oldest = _oldest(entries)
            if not page.has_more or not fresh or oldest is None:
                break
            if ordered and oldest < horizon and not _worth_paging_on(in_flight, items, oldest):
                break
            if pages >= self._max_pages:
                log.warning("list.page_cap_reached", pages=pages, hint="raise RELAY_MAX_PAGES_PER_CYCLE if this repeats")
                break
            end_date = format_timestamp(oldest + timedelta(milliseconds=1))
        return ListWindow(items=items, pages=pages, ordered=ordered)

    def _snapshots(self, items: Iterable[Mapping[str, Any]]) -> list[ActionSnapshot]:
        return [s for s in (snapshot_from(i) for i in items) if s is not None]

    async def _recheck_missing(
        self, in_flight: Mapping[str, ActionSnapshot], listed: Mapping[str, Any]
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
            except AuthError:
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
        except AuthError:
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


def _worth_paging_on(in_flight: Mapping[str, ActionSnapshot], items: Mapping[str, Any], oldest: datetime) -> bool:
    """Whether another page is cheaper than fetching the unseen in-flight actions by id.

    One page shows up to 100 actions; one GET shows one. Page on while at least two
    in-flight actions are unseen and some of them are older than this page.
    """
    unseen = [s for i, s in in_flight.items() if i not in items]
    older = [s for s in unseen if (parse_timestamp(s.created_at) or oldest) < oldest]
    return len(unseen) >= 2 and bool(older)  # noqa: PLR2004 - with one left, a GET costs the same as a page


def _created(entry: Mapping[str, Any]) -> datetime | None:
    return parse_timestamp(entry.get("created_at"))


def _newest_first(entries: Sequence[Mapping[str, Any]]) -> bool:
    moments = [m for m in (_created(e) for e in entries) if m is not None]
    return all(a >= b for a, b in pairwise(moments))


def _oldest(entries: Sequence[Mapping[str, Any]]) -> datetime | None:
    moments = [m for m in (_created(e) for e in entries) if m is not None]
    return min(moments) if moments else None


def _newest(current: str | None, entries: Iterable[Mapping[str, Any]]) -> str | None:
    moments = [m for m in (_created(e) for e in entries) if m is not None]
    known = parse_timestamp(current)
    if known is not None:
        moments.append(known)
    return format_timestamp(max(moments)) if moments else current


def _warn_invalid(count: int) -> None:
    if count:
        log.warning("list.invalid_entries", skipped=count, hint="list entries without an id are ignored")
