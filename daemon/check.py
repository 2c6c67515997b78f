"""``voucherify-relay check``: validate settings, make one cheap API call, say plainly what is wrong."""

from __future__ import annotations

import time

import aiohttp

from daemon.arrivals import from_text, rate_per_hour, typical_duration_s
from daemon.arrivals import idle_interval_s as learned_idle_s
from daemon.bootstrap import build_client, build_sinks, open_stores
from daemon.cadence import Cadence, estimate_cost, plan_report
from daemon.errors import AuthError, ConfigError, RedirectError, StoreError, VoucherifyError
from daemon.monthly import billing_cycle, expected_detection_s, idle_interval_s
from daemon.poll_loop import PACING_HISTORY, cadence_for
from daemon.projects import project_variable
from daemon.settings import RelaySettings
from daemon.sinks.slack_app import SlackAppSink
from daemon.store import Stores
from daemon.voucherify import RetryPolicy

EX_CONFIG = 78  # refused credentials are a configuration error, like cli.EX_CONFIG


async def run_check(settings: RelaySettings) -> int:
    """Print what the relay would do and whether Voucherify accepts each project's keys; return the exit status.

    With several projects every project's line names it (``voucherify (project eu): ...``).
    """
    projects = {name: settings.for_project(project) for name, project in settings.all_projects().items()}
    several = len(projects) > 1
    labels = {name: f" (project {name})" if several else "" for name in projects}
    if several:
        print(f"configuration: ok (state {settings.state_display()}; {len(projects)} projects: {', '.join(projects)})")
    else:
        pace = f"poll every {settings.poll_interval:g}s while busy, {settings.idle_poll_interval:g}s when idle"
        if settings.pacing == "progress":
            pace = f"poll near each estimated finish, at most every {settings.poll_interval:g}s; {settings.idle_poll_interval:g}s when idle, as arrivals allow"
        print(f"configuration: ok (state {settings.state_display()}; {pace})")
    sinks = settings.all_sinks()
    for name, sink in sinks.items():
        print(f"sink {name}: {sink.kind} {sink.display_url()}{'' if sink.kind != 'webhook' or sink.secret else ' (unsigned: set a secret)'}")
    if not sinks:
        print("sinks: none configured: `run` needs RELAY_WEBHOOK_URL or RELAY_SINKS__<NAME>__KIND/URL")
    for name, scoped in projects.items():
        print_cost(scoped, label=labels[name])
    state_ok, state_lines = await describe_state(settings, projects, labels)
    for line in state_lines:
        print(line)
    async with aiohttp.ClientSession() as session:
        slack_status = await check_slack_apps(settings, session)
        results = [await check_project(scoped, name, session, label=labels[name]) for name, scoped in projects.items()]
    failed = EX_CONFIG if EX_CONFIG in results else max(results, default=0)
    return (failed or slack_status or (0 if state_ok else 1)) if sinks else 1


async def check_project(settings: RelaySettings, name: str, session: aiohttp.ClientSession, *, label: str) -> int:
    """Ask one project's API for one list entry; print the verdict; return 0, 1 (unreachable) or EX_CONFIG (keys refused)."""
    client = build_client(settings, session, retry=RetryPolicy(max_attempts=1))
    try:
        page = await client.list_page(limit=1)
    except RedirectError as exc:
        raise ConfigError(project_variable(name, "API_URL"), str(exc)) from None
    except AuthError as exc:
        keys = f"{project_variable(name, 'APP_ID')} and {project_variable(name, 'APP_TOKEN')}"
        print(f"voucherify{label}: FAILED: credentials refused (HTTP {exc.status}): check {keys}")
        print(f"  {exc}")
        return EX_CONFIG
    except VoucherifyError as exc:
        print(f"voucherify{label}: FAILED: {exc}")
        return 1
    remaining = "" if client.rate_limit_remaining is None else f"; {client.rate_limit_remaining} requests left in the current rate-limit period"
    print(f"voucherify{label}: ok ({settings.voucherify_api_url} accepted the keys; {len(page.actions)} recent action(s) visible{remaining})")
    return 0


async def check_slack_apps(settings: RelaySettings, session: aiohttp.ClientSession) -> int:
    """Ask Slack whether each Slack app sink's token works and its channel is reachable; return 0 or EX_CONFIG."""
    status = 0
    for name, sink in build_sinks(settings, session).items():
        if not isinstance(sink, SlackAppSink):
            continue
        for ok, line in await sink.probe():
            print(f"sink {name}: {'ok' if ok else 'FAILED' if ok is False else 'note'}: {line}")
            status = EX_CONFIG if ok is False else status
    return status


async def describe_state(settings: RelaySettings, projects: dict[str, RelaySettings], labels: dict[str, str]) -> tuple[bool, list[str]]:
    """Say whether the state database is reachable and at which schema version, and what progress pacing learned (changing nothing)."""
    where = settings.state_display()
    if settings.state_kind == "sqlite" and not settings.state_path.exists():
        return True, [f"state: {where} does not exist yet; the relay creates it on its first run"]
    try:
        stores = await open_stores(settings, mode="ro")
    except StoreError as exc:
        if settings.state_kind == "postgres" and "no relay tables yet" in str(exc):
            return True, [f"state: ok ({where} is reachable; no relay tables yet: the relay creates them on its first run)"]
        return False, [f"state: FAILED: {exc}"]
    try:
        version = await stores.schema_version()
        learned = await describe_learning(stores, projects, labels) if settings.pacing == "progress" else []
    except StoreError as exc:
        return False, [f"state: FAILED: {exc}"]
    finally:
        await stores.close()
    return True, [f"state: ok ({where} reachable, schema version {version})", *learned]


async def describe_learning(stores: Stores, projects: dict[str, RelaySettings], labels: dict[str, str]) -> list[str]:
    """Say, per project, what progress pacing has learned (kept with the state) and the idle interval it gives now."""
    lines, now = [], time.time()
    for name, scoped in projects.items():
        history = from_text(await stores.for_project(name).actions.load_meta(PACING_HISTORY))
        if history is None:
            lines.append(f"pacing{labels[name]}: nothing learned yet: the first poll reads the list's last day to learn from")
            continue
        idle_s = learned_idle_s(history, now=now, idle_s=scoped.idle_poll_interval, fast_s=scoped.poll_interval)
        typical = typical_duration_s(history)
        lines.append(
            f"pacing{labels[name]}: learned {rate_per_hour(history, now=now):.2g} new actions an hour over the last day"
            f"{'' if typical is None else f', most finishing within {typical:,.0f}s'}: idle poll every {idle_s:,.0f}s now; "
            f"a new action is noticed {expected_detection_s(idle_s):,.0f}s after it starts on average (POST /watch makes it immediate)"
        )
    return lines


def print_cost(settings: RelaySettings, *, label: str = "") -> None:
    """Print what the polling settings will cost in Voucherify requests (``label`` names the project, with several)."""
    cadence = cadence_for(settings)
    cadence = cadence.with_idle(print_monthly(settings, cadence, label=label))
    cost = estimate_cost(cadence)
    busy_total = cost.busy_per_hour + cost.gets_per_hour
    print(
        f"cost{label}: idle {cost.idle_per_hour:,.0f} requests/hour ({cost.per_month(busy_hours_per_day=0):,.0f}/month); "
        f"busy {busy_total:,.0f}/hour (polls plus ~{cost.gets_per_hour:g} GETs for finished actions); "
        f"with 2 busy hours a day {cost.per_month(busy_hours_per_day=2):,.0f}/month"
    )
    if settings.api_budget_per_hour is not None:
        budget = settings.api_budget_per_hour
        print(f"budget{label}: at most {budget} requests in any hour (RELAY_API_BUDGET_PER_HOUR), polls spread at least {cadence.budget_floor_s:g}s apart")
    for line in plan_report(cost):
        print(f"  {line}{label}")
    if busy_total > 100 and settings.api_budget_per_hour is None:  # noqa: PLR2004 - the sandbox limit
        print(f"  note{label}: a sandbox project allows 100 requests/hour: set RELAY_API_BUDGET_PER_HOUR=80 there")


def print_monthly(settings: RelaySettings, cadence: Cadence, *, label: str = "") -> float | None:
    """Print the idle interval RELAY_API_BUDGET_PER_MONTH gives over a whole billing cycle; return it (None: no monthly budget)."""
    budget = settings.api_budget_per_month
    if budget is None and settings.pacing == "progress":
        print(
            f"pacing{label}: progress; idle poll every {cadence.idle_s:g}s at one new action every two hours, shorter as more arrive "
            f"(a new action is then noticed {expected_detection_s(cadence.idle_s):g}s after it starts on average)"
        )
        return None
    if budget is None:
        print(f"pacing{label}: {settings.pacing}; a new action is noticed {expected_detection_s(cadence.idle_s):g}s after it starts on average (idle polls)")
        return None
    cycle = billing_cycle(time.time(), cycle_day=settings.billing_cycle_day)
    idle_s = idle_interval_s(budget=budget, used=0, now=cycle.start, cycle=cycle, fast_s=cadence.fast_s)
    floor_s = max(idle_s, cadence.budget_floor_s)
    print(
        f"monthly budget{label}: {budget:,} requests per billing cycle (from day {settings.billing_cycle_day}): idle poll every {floor_s:,.0f}s "
        f"when the cycle's spending is on track; a new action is noticed {expected_detection_s(floor_s):,.0f}s after it starts on average "
        f"(at most {floor_s:,.0f}s; POST /watch makes it immediate)"
    )
    return idle_s
