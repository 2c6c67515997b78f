"""``voucherify-relay demo``: a built-in Voucherify stand-in, a local receiver and the relay between them.

Nothing leaves the machine: the stand-in and the receiver listen on 127.0.0.1 and the
state database lives in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon.demo.receiver import Received, RecordingReceiver
from daemon.demo.scenario import play_demo_scenario
from daemon.demo.slack_web import CHANNEL, Call, SlackWebStandIn
from daemon.demo.standin import VoucherifyStandIn
from daemon.lifecycle import run_relay
from daemon.logs import configure_logging
from daemon.settings import load_settings
from daemon.slack_blocks import render_message, render_text
from daemon.voucherify import RetryPolicy

DEMO_POLL_S = 0.5
EXPECTED_EVENTS = 4
LIVE_METHODS = {"chat.postMessage": "the message appears", "chat.update": "the same message, updated"}


def print_delivery(received: Received, *, slack_json: bool) -> None:
    """Print one delivered event and what a Slack sink would post for it."""
    print_event(received.envelope, msg_id=received.event_id, signature_ok=bool(received.signature_ok))
    print_slack(received.envelope, as_json=slack_json)


def print_live(call: Call) -> None:
    """Print one state of a live Slack message as the Slack app sink sent it (post, progress update, thread reply)."""
    if call.method not in LIVE_METHODS or not call.answer.get("ok"):
        return
    kind = "thread reply" if call.args.get("thread_ts") else LIVE_METHODS[call.method]
    print(f"\n       Slack app sink: {call.method} ({kind}): {call.args.get('text', '')}")
    print("\n".join("         " + line for line in json.dumps(call.args.get("blocks", []), indent=2, ensure_ascii=False).splitlines()))


def print_event(envelope: dict[str, Any], *, msg_id: str, signature_ok: bool) -> None:
    """Print one event the way a person reads it."""
    data = envelope.get("data", {})
    mark = {"success": "OK  ", "partial": "PART", "failure": "FAIL"}.get(data.get("outcome"), "    ")
    counts = f"done={data.get('done_count')} failed={data.get('failed_count')}"
    print(f"\n[{mark}] {envelope['type']}  {data.get('type')}  outcome={data.get('outcome')}  {counts}")
    print(f"       action {data.get('id')}  event {msg_id}  signature {'valid' if signature_ok else 'INVALID'}")
    if data.get("message"):
        print(f"       {data['message']}")
    for row in data.get("failures", [])[:3]:
        where = " ".join(f"{k}={row[k]}" for k in ("row", "code", "source_id") if row.get(k) not in (None, ""))
        print(f"       - {where}: {row.get('reason')}")
    if data.get("reports"):
        print(f"       reports: {', '.join(data['reports'])} (until {data.get('reports_available_till')})")


def print_slack(envelope: dict[str, Any], *, as_json: bool) -> None:
    """Show what a Slack sink would post: the fallback text, or the whole Block Kit message."""
    if as_json:
        print("       Slack message (Block Kit):")
        print("\n".join("       " + line for line in json.dumps(render_message(envelope), indent=2, ensure_ascii=False).splitlines()))
        return
    print("       Slack preview: " + render_text(envelope).splitlines()[0])


async def run_demo(*, seconds: float | None = None, slack_json: bool = False) -> int:
    """Play the show; return 0 when every expected event arrived with a valid signature."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = RecordingReceiver(secret=secret, path="/hooks/voucherify", on_delivery=lambda r: print_delivery(r, slack_json=slack_json))
    standin = VoucherifyStandIn()
    base_url = await standin.start()
    hook_url = await receiver.start()
    slack_token = "xoxb-demo-" + os.urandom(12).hex()
    slack = SlackWebStandIn(token=slack_token, on_call=print_live) if slack_json else None
    slack_url = await slack.start() if slack is not None else None
    history = [standin.add_action("VOUCHERS.IMPORT_CSV", status="DONE", progress=100) for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="voucherify-relay-demo-") as tmp:
        env = {
            "RELAY_ENV_FILE": str(Path(tmp) / "none.env"),
            "RELAY_VOUCHERIFY_API_URL": base_url,
            "RELAY_VOUCHERIFY_APP_ID": "demo-app",
            "RELAY_VOUCHERIFY_APP_TOKEN": "demo-token",
            "RELAY_POLL_INTERVAL": str(DEMO_POLL_S),
            "RELAY_IDLE_POLL_INTERVAL": str(DEMO_POLL_S),
            "RELAY_STATE_URL": f"sqlite:///{tmp}/demo.db",
            "RELAY_WEBHOOK_URL": hook_url,
            "RELAY_WEBHOOK_SECRET": secret,
            "RELAY_LOG_LEVEL": "warning",
            "RELAY_HTTP_LISTEN": "off",
        }
        if slack_url is not None:  # --slack: a Slack app sink shows each action as one live message
            env |= {
                "RELAY_SINKS__LIVE__KIND": "slack_app",
                "RELAY_SINKS__LIVE__TOKEN": slack_token,
                "RELAY_SINKS__LIVE__CHANNEL": CHANNEL,
                "RELAY_SINKS__LIVE__API_URL": slack_url,
                "RELAY_SINKS__LIVE__UPDATE_INTERVAL_S": "0.5",
                "RELAY_PACING": "fixed",  # progress updates ride on polls: poll every 0.5 s so each step shows
            }
        configure_logging(level="warning", fmt="console")
        _print_intro(base_url, hook_url, len(history))
        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(load_settings(env), stop=stop, retry=RetryPolicy(max_attempts=2, backoff_max_s=0.5)))
        await asyncio.sleep(DEMO_POLL_S * 2)  # the first poll takes the baseline
        print("The relay took its baseline: the 3 old actions produced no events. Now the show starts.\n")
        started = time.monotonic()
        await play_demo_scenario(standin, step_s=1.0)
        await _wait_for_events(receiver, deadline=started + (seconds or 30))
        stop.set()
        await relay
    await receiver.close()
    if slack is not None:
        await slack.close()
    calls = {path: standin.count(path) for path in ("list", "get")}
    await standin.close()
    return _summary(receiver, calls)


async def _wait_for_events(receiver: RecordingReceiver, *, deadline: float) -> None:
    while len(receiver.delivered) < EXPECTED_EVENTS and time.monotonic() < deadline:
        receiver.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.changed.wait(), timeout=max(0.1, deadline - time.monotonic()))
    await asyncio.sleep(DEMO_POLL_S)


def _print_intro(base_url: str, hook_url: str, history: int) -> None:
    print("voucherify-relay demo")
    print(f"  Voucherify stand-in  {base_url}  ({history} actions already finished before the relay starts)")
    print(f"  webhook receiver     {hook_url}  (checks Standard Webhooks signatures)")
    print(f"  relay                polls every {DEMO_POLL_S}s, state in a temporary SQLite file\n")


def _summary(receiver: RecordingReceiver, calls: dict[str, int]) -> int:
    got = len(receiver.delivered)
    print(f"\n{got} event(s) received, {receiver.bad_signatures} bad signature(s).")
    print(f"Voucherify API calls: {calls['list']} list + {calls['get']} get (one GET per finished action, one list per poll).")
    print("Next: `voucherify-relay check` with your keys, then `voucherify-relay run`. See README.md.")
    return 0 if got >= EXPECTED_EVENTS and receiver.bad_signatures == 0 else 1
