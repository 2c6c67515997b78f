"""Walk the async-actions list for one cycle: the newest pages first, then any backlog.

The docs state neither the list's order nor whether ``end_date`` is inclusive; they say
only that it limits results to actions *scheduled before* it. We assume newest first by
``created_at`` and page backwards with ``end_date`` set to the oldest ``created_at`` on
the page plus 1 ms, so the next page starts at (and repeats) that item whether the bound
is inclusive or exclusive; ids are de-duplicated. Every page is checked: if it is not
newest first we log it and keep paging to the end of the list (bounded by the cap).

The head pass stops once a page reaches the window earlier polls covered (``horizon``:
their newest ``created_at`` minus an overlap) or ``has_more`` is false. When the page cap
(RELAY_MAX_PAGES_PER_CYCLE) stops it first, the window still owed becomes a ``Backlog``
(persisted with the cursor). While one is owed, the head pass reads only what is newer
than the previous cycle's newest action (the overlap would re-read the burst itself), and
leaves at least one page of the cap to the backlog, which resumes at its saved
``end_date`` and closes once a page reaches its ``owed_until`` or the list ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import structlog

from daemon.errors import AuthError, VoucherifyError
from daemon.model import ActionSnapshot, format_timestamp, is_action_id, parse_timestamp
from daemon.store import Backlog
from daemon.voucherify import VoucherifyClient

log = structlog.get_logger("daemon.poller")
_STEP = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class ListWindow:
    """The de-duplicated list entries one cycle saw, and the backlog it leaves."""

    items: dict[str, dict[str, Any]]
    backlog_items: dict[str, dict[str, Any]]
    pages: int
    backlog_pages: int
    ordered: bool
    backlog: Backlog | None
    page_span_s: float | None  # created_at span of the last full page: the density estimate for pages owed

    def pages_owed(self, window_s: float | None) -> int | None:
        """Estimate the pages a backlog of ``window_s`` still owes, assuming it is as dense as the last full page read."""
        if window_s is None:
            return None
        if not self.page_span_s:
            return 1
        return max(1, math.ceil(window_s / self.page_span_s))

    def read_since(self, horizon: datetime) -> float:
        """Return where this reading began: the horizon, or the oldest entry it reached when the page cap stopped it."""
        if self.backlog is None:
            return horizon.timestamp()
        moments = [m.timestamp() for entry in self.items.values() if (m := parse_timestamp(entry.get("created_at"))) is not None]
        return min(moments, default=horizon.timestamp())


@dataclass(frozen=True, slots=True)
class _Page:
    entries: list[dict[str, Any]]
    fresh: int
    has_more: bool
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class ListPlan:
    """Where one cycle's listing stops: the horizon, the previous newest, the backlog and the cap."""

    horizon: datetime
    seen_through: datetime
    backlog: Backlog | None
    max_pages: int
    started_at: float  # the cycle's clock, for the backlog's age
    baseline_since: datetime | None = None  # set on the first run: a backlog it leaves records history


class ListWalker:
    """Reads one cycle's list pages within the page cap."""

    def __init__(self, client: VoucherifyClient, *, page_size: int, in_flight: Mapping[str, ActionSnapshot]) -> None:
        self._client = client
        self._page_size = page_size
        self._in_flight = in_flight
        self.items: dict[str, dict[str, Any]] = {}
        self.backlog_items: dict[str, dict[str, Any]] = {}
        self.pages = 0
        self.ordered = True
        self.span_s: float | None = None

    async def walk(self, plan: ListPlan) -> ListWindow:
        """Read the head, add what the cap left unread to the backlog, then spend the rest of the cap on it."""
        head_cap = plan.max_pages - 1 if plan.backlog is not None and plan.max_pages > 1 else plan.max_pages
        gap_top = await self._head(plan, cap=head_cap)
        backlog = _merge(plan, gap_top)
        backlog_pages_before = self.pages
        if backlog is not None and self.pages < plan.max_pages:
            backlog = await self._backlog(backlog, cap=plan.max_pages, now=plan.started_at)
        return ListWindow(
            items=self.items,
            backlog_items=self.backlog_items,
            pages=self.pages,
            backlog_pages=self.pages - backlog_pages_before,
            ordered=self.ordered,
            backlog=backlog,
            page_span_s=self.span_s,
        )

    async def _head(self, plan: ListPlan, *, cap: int) -> datetime | None:
        """Page from the newest entry; return the end_date the cap stopped at, None when the window was covered."""
        stop_at = plan.seen_through if plan.backlog is not None else plan.horizon
        end_date: datetime | None = None
        while True:
            page = await self._read(end_date, into=self.items)
            if not page.has_more or not page.fresh or page.oldest is None:
                return None
            below = self.ordered and page.oldest < stop_at
            if below and not _worth_paging_on(self._in_flight, self.items, page.oldest):
                return None
            if self.pages >= cap:
                log.warning("list.page_cap_reached", pages=self.pages, hint="the rest is read by the next cycles (list backlog)")
                return None if below else page.oldest + _STEP
            end_date = page.oldest + _STEP

    async def _backlog(self, backlog: Backlog, *, cap: int, now: float) -> Backlog | None:
        """Continue the owed window from its saved end_date; return what is still owed (None: caught up)."""
        end_date = parse_timestamp(backlog.resume_end_date)
        owed_until = parse_timestamp(backlog.owed_until)
        read = 0
        while end_date is not None and owed_until is not None and self.pages < cap:
            try:
                page = await self._read(end_date, into=self.backlog_items)
            except AuthError:
                raise
            except VoucherifyError as exc:
                log.warning("list.backlog_page_failed", caused_by=str(exc), hint="resumed next cycle")
                break
            read += 1
            if not page.has_more or page.oldest is None or page.oldest < owed_until:
                _log_caught_up(backlog, pages=read, now=now)
                return None
            if page.oldest + _STEP >= end_date:
                log.warning("list.backlog_stalled", end_date=format_timestamp(end_date), hint="a full page shares one millisecond; paging cannot go on")
                return None
            end_date = page.oldest + _STEP
        resume = format_timestamp(end_date) if end_date is not None else backlog.resume_end_date
        return replace(backlog, resume_end_date=resume, pages_read=backlog.pages_read + read)

    async def _read(self, end_date: datetime | None, *, into: dict[str, dict[str, Any]]) -> _Page:
        page = await self._client.list_page(limit=self._page_size, end_date=format_timestamp(end_date) if end_date else None)
        self.pages += 1
        entries = [a for a in page.actions if _valid_entry(a)]
        _warn_invalid(len(page.actions) - len(entries))
        seen = self.items.keys() | self.backlog_items.keys()
        fresh = [a for a in entries if a["id"] not in seen]
        into.update((a["id"], a) for a in fresh)
        if self.ordered and not _newest_first(entries):
            self.ordered = False
            log.warning("list.unordered", hint="list page is not newest first; scanning the whole list this cycle")
        moments = [m for m in (parse_timestamp(e.get("created_at")) for e in entries) if m is not None]
        span = (max(moments) - min(moments)).total_seconds() if len(moments) >= self._page_size else None
        self.span_s = span if span is not None else self.span_s
        return _Page(entries=entries, fresh=len(fresh), has_more=page.has_more, oldest=min(moments) if moments else None)


def _merge(plan: ListPlan, gap_top: datetime | None) -> Backlog | None:
    """Fold what the head pass left unread into the one owed interval."""
    if gap_top is None:
        return plan.backlog
    old = plan.backlog
    if old is None:
        since = format_timestamp(plan.baseline_since) if plan.baseline_since is not None else None
        backlog = Backlog(format_timestamp(gap_top), format_timestamp(plan.horizon), started_at=plan.started_at, baseline_since=since)
        log.warning(
            "list.backlog_started",
            window_s=_seconds(backlog),
            baseline=since is not None or None,
            hint="later cycles read the newest page first, then continue here",
        )
        return backlog
    top = max(gap_top, parse_timestamp(old.resume_end_date) or gap_top)
    bottom = min(plan.horizon, parse_timestamp(old.owed_until) or plan.horizon)
    return replace(old, resume_end_date=format_timestamp(top), owed_until=format_timestamp(bottom))


def _log_caught_up(backlog: Backlog, *, pages: int, now: float) -> None:
    log.info("list.caught_up", backlog_pages=backlog.pages_read + pages, behind_for_s=round(now - backlog.started_at, 1))


def backlog_window_s(backlog: Backlog | None) -> float | None:
    """Return the time window (in created_at seconds) a backlog still owes."""
    return None if backlog is None else _seconds(backlog)


def _seconds(backlog: Backlog) -> float:
    top, bottom = parse_timestamp(backlog.resume_end_date), parse_timestamp(backlog.owed_until)
    return max(0.0, (top - bottom).total_seconds()) if top and bottom else 0.0


def _valid_entry(entry: object) -> bool:
    """Whether a list entry carries a plain Voucherify id (anything else must never reach a URL)."""
    return isinstance(entry, dict) and is_action_id(entry.get("id"))


def _worth_paging_on(in_flight: Mapping[str, ActionSnapshot], items: Mapping[str, Any], oldest: datetime) -> bool:
    """Whether another page is cheaper than fetching the unseen in-flight actions by id.

    One page shows up to 100 actions; one GET shows one. Page on while at least two
    in-flight actions are unseen and some of them are older than this page.
    """
    unseen = [s for i, s in in_flight.items() if i not in items]
    older = [s for s in unseen if (parse_timestamp(s.created_at) or oldest) < oldest]
    return len(unseen) >= 2 and bool(older)  # noqa: PLR2004 - with one left, a GET costs the same as a page


def _newest_first(entries: Sequence[Mapping[str, Any]]) -> bool:
    moments = [m for m in (parse_timestamp(e.get("created_at")) for e in entries) if m is not None]
    return all(a >= b for a, b in pairwise(moments))


def _warn_invalid(count: int) -> None:
    if count:
        log.warning("list.invalid_entries", skipped=count, hint="list entries without a plain id ([A-Za-z0-9_-], at most 64) are ignored")
