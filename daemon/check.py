"""``voucherify-relay check``: validate settings, make one cheap API call, say plainly what is wrong."""

from __future__ import annotations

import aiohttp

from daemon.bootstrap import build_client, open_stores
from daemon.cadence import Cadence, estimate_cost, plan_report
from daemon.errors import AuthError, ConfigError, RedirectError, StoreError, VoucherifyError
from daemon.settings import RelaySettings
from daemon.voucherify import RetryPolicy

EX_CONFIG = 78  # refused credentials are a configuration error, like cli.EX_CONFIG


async def run_check(settings: RelaySettings) -> int:
    """Print what the relay would do and whether Voucherify accepts the keys; return the exit status."""
    pace = f"poll every {settings.poll_interval:g}s while busy, {settings.idle_poll_interval:g}s when idle"
    print(f"configuration: ok (state {settings.state_display()}; {pace})")
    sinks = settings.all_sinks()
    for name, sink in sinks.items():
        print(f"sink {name}: {sink.kind} {sink.display_url()}{'' if sink.kind != 'webhook' or sink.secret else ' (unsigned: set a secret)'}")
    if not sinks:
        print("sinks: none configured: `run` needs RELAY_WEBHOOK_URL or RELAY_SINKS__<NAME>__KIND/URL")
    print_cost(settings)
    state_ok, state_line = await describe_state(settings)
    print(state_line)
    async with aiohttp.ClientSession() as session:
        client = build_client(settings, session, retry=RetryPolicy(max_attempts=1))
        try:
            page = await client.list_page(limit=1)
        except RedirectError as exc:
            raise ConfigError("RELAY_VOUCHERIFY_API_URL", str(exc)) from None
        except AuthError as exc:
            print(f"voucherify: FAILED: credentials refused (HTTP {exc.status}): check RELAY_VOUCHERIFY_APP_ID and RELAY_VOUCHERIFY_APP_TOKEN")
            print(f"  {exc}")
            return EX_CONFIG
        except VoucherifyError as exc:
            print(f"voucherify: FAILED: {exc}")
            return 1
    remaining = "" if client.rate_limit_remaining is None else f"; {client.rate_limit_remaining} requests left in the current rate-limit period"
    print(f"voucherify: ok ({settings.voucherify_api_url} accepted the keys; {len(page.actions)} recent action(s) visible{remaining})")
    return 0 if sinks and state_ok else 1


async def describe_state(settings: RelaySettings) -> tuple[bool, str]:
    """Say whether the state database is reachable and at which schema version (changing nothing)."""
    where = settings.state_display()
    if settings.state_kind == "sqlite" and not settings.state_path.exists():
        return True, f"state: {where} does not exist yet; the relay creates it on its first run"
    try:
        stores = await open_stores(settings, mode="ro")
    except StoreError as exc:
        if settings.state_kind == "postgres" and "no relay tables yet" in str(exc):
            return True, f"state: ok ({where} is reachable; no relay tables yet: the relay creates them on its first run)"
        return False, f"state: FAILED: {exc}"
    try:
        version = await stores.schema_version()
    except StoreError as exc:
        return False, f"state: FAILED: {exc}"
    finally:
        await stores.close()
    return True, f"state: ok ({where} reachable, schema version {version})"


def print_cost(settings: RelaySettings) -> None:
    """Print what the polling settings will cost in Voucherify requests."""
    cadence = Cadence(fast_s=settings.poll_interval, idle_s=settings.idle_poll_interval, budget_per_hour=settings.api_budget_per_hour)
    cost = estimate_cost(cadence)
    busy_total = cost.busy_per_hour + cost.gets_per_hour
    print(
        f"cost: idle {cost.idle_per_hour:,.0f} requests/hour ({cost.per_month(busy_hours_per_day=0):,.0f}/month); "
        f"busy {busy_total:,.0f}/hour (polls plus ~{cost.gets_per_hour:g} GETs for finished actions); "
        f"with 2 busy hours a day {cost.per_month(busy_hours_per_day=2):,.0f}/month"
    )
    if settings.api_budget_per_hour is not None:
        budget = settings.api_budget_per_hour
        print(f"budget: at most {budget} requests in any hour (RELAY_API_BUDGET_PER_HOUR), polls spread at least {cadence.budget_floor_s:g}s apart")
    for line in plan_report(cost):
        print(f"  {line}")
    if busy_total > 100 and settings.api_budget_per_hour is None:  # noqa: PLR2004 - the sandbox limit
        print("  note: a sandbox project allows 100 requests/hour: set RELAY_API_BUDGET_PER_HOUR=80 there")
