"""``voucherify-relay check``: validate settings, make one cheap API call, say plainly what is wrong."""

from __future__ import annotations

import aiohttp

from daemon.errors import AuthError, VoucherifyError
from daemon.settings import RelaySettings
from daemon.voucherify import RetryPolicy, VoucherifyClient


async def run_check(settings: RelaySettings) -> int:
    """Print what the relay would do and whether Voucherify accepts the keys; return the exit status."""
    print(f"configuration: ok (state {settings.state_path}, poll every {settings.poll_interval:g}s)")
    sinks = settings.all_sinks()
    for name, sink in sinks.items():
        print(f"sink {name}: {sink.kind} {sink.display_url()}{'' if sink.kind != 'webhook' or sink.secret else ' (unsigned: set a secret)'}")
    if not sinks:
        print("sinks: none configured: `run` needs RELAY_WEBHOOK_URL or RELAY_SINKS__<NAME>__KIND/URL")
    async with aiohttp.ClientSession() as session:
        client = VoucherifyClient(
            session,
            base_url=settings.voucherify_api_url,
            app_id=settings.voucherify_app_id or "",
            app_token=settings.voucherify_app_token.get_secret_value() if settings.voucherify_app_token else "",
            retry=RetryPolicy(max_attempts=1),
            timeout_s=settings.api_timeout_s,
        )
        try:
            page = await client.list_page(limit=1)
        except AuthError as exc:
            print(f"voucherify: FAILED: credentials refused: {exc}")
            return 1
        except VoucherifyError as exc:
            print(f"voucherify: FAILED: {exc}")
            return 1
    remaining = "" if client.rate_limit_remaining is None else f"; {client.rate_limit_remaining} requests left in the current rate-limit period"
    print(f"voucherify: ok ({settings.voucherify_api_url} accepted the keys; {len(page.actions)} recent action(s) visible{remaining})")
    return 0 if sinks else 1
