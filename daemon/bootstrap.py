"""The composition root: settings -> adapters -> a :class:`~daemon.app.Relay`.

Only this module knows every piece. ``run``, ``check``, ``send-test``, the demo and the
tests all build what they need here; tests pass their own clock, session, store, client
or sinks as arguments instead of reaching into a running relay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from typing import Literal

import aiohttp

from daemon.app import Parts, Relay
from daemon.budget import WINDOW_S, RequestBudget
from daemon.delivery_policy import DeliveryPolicy
from daemon.elector import Elector, Gate
from daemon.leadership import timing_for
from daemon.lease import POLL_LEASE, LeaseStore, SqliteLeaseStore
from daemon.lock import InstanceLock
from daemon.metrics import RelayMetrics
from daemon.model import DEFAULT_PROJECT, Event
from daemon.outbox import Dispatcher
from daemon.pacing import AUTH_BACKOFF_S
from daemon.poll_loop import BLOCKED_UNTIL
from daemon.poller import Poller
from daemon.project_runner import ProjectParts
from daemon.settings import RelaySettings
from daemon.sink_settings import SinkSettings
from daemon.sinks import Sink
from daemon.sinks.slack import SlackSink
from daemon.sinks.slack_app import SlackAppSink
from daemon.sinks.webhook import WebhookSink
from daemon.spread import Spreader
from daemon.store import MessageRefs, Stores
from daemon.store.sqlite import open_sqlite
from daemon.voucherify import RetryPolicy, VoucherifyClient


def build_sinks(
    settings: RelaySettings, session: aiohttp.ClientSession, *, messages: MessageRefs | None = None, clock: Callable[[], float] = time.time
) -> dict[str, Sink]:
    """Create one adapter per configured sink (``messages``: where Slack app sinks keep their messages' ids)."""
    sinks: dict[str, Sink] = {}
    for name, spec in settings.all_sinks().items():
        if spec.kind == "slack_app":
            sinks[name] = SlackAppSink(name, spec, session, refs=messages, clock=clock, show_project=len(settings.all_projects()) > 1)
        elif spec.kind == "slack":
            sinks[name] = SlackSink(name, spec, session, min_interval_s=spec.min_interval_s)
        else:
            sinks[name] = WebhookSink(name, spec, session)
    return sinks


def build_client(
    settings: RelaySettings,
    session: aiohttp.ClientSession,
    *,
    retry: RetryPolicy | None = None,
    budget: RequestBudget | None = None,
    blocked_until: float = 0.0,
    permit: Callable[[], None] = lambda: None,
) -> VoucherifyClient:
    """Create the Voucherify client the settings describe."""
    token = settings.voucherify_app_token.get_secret_value() if settings.voucherify_app_token else ""
    return VoucherifyClient(
        session,
        base_url=settings.voucherify_api_url,
        app_id=settings.voucherify_app_id or "",
        app_token=token,
        budget=budget,
        retry=retry or RetryPolicy(max_attempts=settings.api_max_attempts),
        timeout_s=settings.api_timeout_s,
        max_response_bytes=settings.api_max_response_bytes,
        blocked_until=blocked_until,
        permit=permit,
    )


def route_event(specs: Mapping[str, SinkSettings], event: Event) -> list[str]:
    """PURE: return the sinks whose filters accept ``event`` (by event kind, action type glob, outcome and project)."""
    action_type = str(event.data.get("type") or "")
    outcome = str(event.data.get("outcome") or "")
    kind = event.type.removeprefix("async_action.")
    project = str(event.data.get("project") or DEFAULT_PROJECT)
    return [name for name, spec in specs.items() if spec.accepts(action_type=action_type, outcome=outcome, event=kind, project=project)]


def connection_limit(settings: RelaySettings) -> int:
    """Return how many HTTP connections the relay's one session may hold: each project's poll, each sink's sends, and room (aiohttp's 100 at least)."""
    needed = len(settings.all_projects()) + sum(spec.max_concurrency for spec in settings.all_sinks().values())
    return max(100, 2 * needed)


def open_lease_store(settings: RelaySettings) -> tuple[LeaseStore, bool]:
    """Return the lease store for RELAY_STATE_URL and whether cycles commit under its fence (PostgreSQL) or not (SQLite)."""
    if settings.state_kind == "postgres":
        from daemon.store.postgres_lease import PostgresLeaseStore  # noqa: PLC0415 - psycopg only loads for PostgreSQL

        return PostgresLeaseStore(settings.state_url), True
    return SqliteLeaseStore(), False


def build_elector(settings: RelaySettings, *, project: str = DEFAULT_PROJECT, store: LeaseStore | None = None, gate: Gate | None = None) -> Elector:
    """Create this replica's side of ``project``'s polling lease (on ``store``, or a lease store of its own; ``gate``: the spreader)."""
    fencing = settings.state_kind == "postgres"
    if store is None:
        store, fencing = open_lease_store(settings)
    name = POLL_LEASE if project == DEFAULT_PROJECT else f"{POLL_LEASE}:{project}"
    timing = timing_for(settings.lease_ttl.total_seconds())
    return Elector(store=store, holder=settings.replica_id, timing=timing, fencing=fencing, name=name, gate=gate)


def build_spreader(settings: RelaySettings, store: LeaseStore, *, metrics: RelayMetrics) -> Spreader | None:
    """Return what spreads several projects' leases over the replicas of one PostgreSQL database (None: nothing to spread)."""
    projects = len(settings.all_projects())
    if settings.state_kind != "postgres" or projects < 2:  # noqa: PLR2004 - one lease has nothing to spread
        return None
    timing = timing_for(settings.lease_ttl.total_seconds())
    return Spreader(store, holder=settings.replica_id, timing=timing, projects=projects, on_members=metrics.replicas.set)


async def open_stores(settings: RelaySettings, *, mode: Literal["rwc", "rw", "ro"] = "rwc", listen: bool = False) -> Stores:
    """Open the state database named by RELAY_STATE_URL (``ro``/``rw``: only an existing one; ``listen``: PostgreSQL's outbox wake)."""
    if settings.state_kind == "postgres":
        from daemon.store.postgres import open_postgres  # noqa: PLC0415 - SQLite users never load the driver

        return await open_postgres(settings.state_url, listen=listen, migrate=mode == "rwc")
    return open_sqlite(settings.state_path, mode=mode)


async def build_relay(
    settings: RelaySettings,
    *,
    clock: Callable[[], float] = time.time,
    session: aiohttp.ClientSession | None = None,
    stores: Stores | None = None,
    client: VoucherifyClient | None = None,
    sinks: Mapping[str, Sink] | None = None,
    retry: RetryPolicy | None = None,
    elector: Elector | None = None,
    auth_backoff_s: tuple[float, float] = AUTH_BACKOFF_S,
) -> Relay:
    """Open (or take) every adapter the relay needs and return it, not yet started.

    One client, poller and elector per Voucherify project; ``client`` and ``elector``, when
    given (tests), are the first project's. The relay owns what it is given and closes it on
    stop. If building fails, whatever was opened here is closed again before the error propagates.
    """
    async with AsyncExitStack() as undo:
        lock = None
        if settings.state_kind == "sqlite":  # PostgreSQL replicas share the database by design
            lock = InstanceLock(settings.state_path)
            lock.acquire()
            undo.callback(lock.release)
        if stores is None:
            stores = await open_stores(settings, listen=True)
            undo.push_async_callback(stores.close)
        if session is None:
            session = aiohttp.ClientSession(raise_for_status=False, connector=aiohttp.TCPConnector(limit=connection_limit(settings)))
            undo.push_async_callback(session.close)
        lease_store = elector.store if elector is not None else open_lease_store(settings)[0]
        undo.push_async_callback(lease_store.close)
        metrics = RelayMetrics(clock=clock)
        spreader = build_spreader(settings, lease_store, metrics=metrics)
        projects: list[ProjectParts] = []
        for name, project in settings.all_projects().items():
            given = (client, elector) if not projects else (None, None)
            scoped = settings.for_project(project)
            built = await _build_project(
                scoped, name, stores=stores, session=session, lease_store=lease_store, gate=spreader, given=given, retry=retry, clock=clock
            )
            projects.append(built)
        sinks = sinks or build_sinks(settings, session, messages=stores.messages, clock=clock)
        parts = Parts(
            settings=settings,
            clock=clock,
            lock=lock,
            stores=stores,
            session=session,
            sinks=sinks,
            projects=tuple(projects),
            lease_store=lease_store,
            dispatcher=_dispatcher(settings, stores=stores, sinks=sinks, metrics=metrics, clock=clock),
            metrics=metrics,
            live_sinks=tuple(s for s in sinks.values() if isinstance(s, SlackAppSink)),
            spreader=spreader,
        )
        undo.pop_all()
    return Relay(parts, auth_backoff_s=auth_backoff_s)


async def _build_project(
    settings: RelaySettings,
    name: str,
    *,
    stores: Stores,
    session: aiohttp.ClientSession,
    lease_store: LeaseStore,
    gate: Gate | None,
    given: tuple[VoucherifyClient | None, Elector | None],
    retry: RetryPolicy | None,
    clock: Callable[[], float],
) -> ProjectParts:
    """Build one project's client, poller and elector on its own slice of the state (``settings``: RelaySettings.for_project)."""
    scoped = stores.for_project(name)
    client, elector = given
    if elector is None:
        elector = build_elector(settings, project=name, store=lease_store, gate=gate)
    if client is None:
        budget = RequestBudget(settings.api_budget_per_hour, history=await scoped.calls.since(clock() - WINDOW_S))
        blocked_until = float(await scoped.actions.load_meta(BLOCKED_UNTIL) or 0)
        client = build_client(settings, session, retry=retry, budget=budget, blocked_until=blocked_until, permit=elector.permit)
    poller = Poller(
        client=client,
        store=scoped.actions,
        route=partial(route_event, settings.all_sinks()),
        page_size=settings.list_page_size,
        max_pages=settings.max_pages_per_cycle,
        backfill=settings.backfill,
        stuck_after=settings.stuck_after or None,
        clock=clock,
        max_event_bytes=settings.max_event_bytes,
        fence=elector.fence,
        project=name,
    )
    return ProjectParts(name=name, settings=settings, stores=scoped, client=client, poller=poller, elector=elector)


def _dispatcher(settings: RelaySettings, *, stores: Stores, sinks: Mapping[str, Sink], metrics: RelayMetrics, clock: Callable[[], float]) -> Dispatcher:
    """Build the dispatcher the projects share, with the delivery policy the settings describe."""
    policy = DeliveryPolicy(max_delay_s=settings.delivery_retry_max_delay, max_age_s=settings.delivery_max_age.total_seconds())
    return Dispatcher(
        store=stores.outbox, sinks=sinks, policy=policy, clock=clock, on_result=metrics.delivery_result, on_store_failed=metrics.store_write_failed
    )
