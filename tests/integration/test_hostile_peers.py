"""Hostile peers: a Voucherify address and receivers that redirect, stream endlessly or nest JSON deeply.

Each peer is a real aiohttp server (``HostileServer``) that answers with a behaviour for
a number of requests, then falls back (e.g. to proxying the stand-in). Each test asserts
that nothing is lost, nothing leaks to a second host (``RecordingServer``), and the
relay's peak RSS stays bounded (``peak_rss_growth``, from /proc/self/status VmHWM).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.app import Relay
from daemon.errors import BadResponseError, RedirectError
from daemon.model import Delivery
from daemon.settings import load_settings
from daemon.sink_settings import SinkSettings
from daemon.sinks.slack import SlackSink
from daemon.voucherify import RetryPolicy, VoucherifyClient
from tests.conftest import APP_TOKEN, baseline, relay_env, running, until, watch_output
from tests.e2e.conftest import cli_env

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024
SAFETY_CAP_BYTES = 256 * MIB  # an "endless" body stops here, so a relay without its caps cannot eat the machine
RSS_BOUND = 50 * MIB
SECRET_PATH = "catch/123/s3cretpath0123456789"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request a server received."""

    method: str
    path_qs: str
    headers: dict[str, str]


@dataclass
class HostileServer:
    """A real server answering every request with ``behaviour`` (``times`` times, or always), then ``fallback``."""

    behaviour: Handler
    fallback: Handler | None = None
    times: int | None = None
    requests: list[Seen] = field(default_factory=list)

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path_qs, dict(request.headers)))
        hostile = self.times is None or self.times > 0
        if self.times is not None:
            self.times -= 1
        handler = self.behaviour if hostile or self.fallback is None else self.fallback
        return await handler(request)


def answer(status: int = 200) -> Handler:
    """Answer ``status`` with a small JSON body."""

    async def handle(_: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True}, status=status)

    return handle


def redirect(location: str, status: int = 302) -> Handler:
    """Redirect every request to ``location``."""

    async def handle(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handle


def endless(status: int = 200, *, content_length: int | None = None) -> Handler:
    """Stream a body that never ends (up to SAFETY_CAP_BYTES), optionally announcing a Content-Length."""
    chunk = b'{"async_actions": [' + b" " * (64 * 1024)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if content_length is not None:
            response.content_length = content_length
        await response.prepare(request)
        try:
            for _ in range(SAFETY_CAP_BYTES // len(chunk)):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what a bounded reader should do
        return response

    return handle


def nested_json(depth: int) -> Handler:
    """Answer 200 with JSON nested ``depth`` levels deep."""

    async def handle(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" * depth + b"]" * depth, content_type="application/json")

    return handle


def proxy(upstream: str) -> Handler:
    """Forward a GET with its Voucherify headers to ``upstream`` (the stand-in)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-app-")}
        async with aiohttp.ClientSession() as session, session.get(upstream + request.path_qs, headers=headers) as upstream_answer:
            return web.Response(status=upstream_answer.status, body=await upstream_answer.read(), content_type="application/json")

    return handle


@pytest.fixture
async def servers() -> Callable[..., Awaitable[HostileServer]]:
    """Start hostile servers on demand; close them after the test."""
    started: list[HostileServer] = []

    async def start(behaviour: Handler, **options: object) -> HostileServer:
        server = HostileServer(behaviour, **options)  # type: ignore[arg-type]
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def _status_kib(name: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{name}:"))
    return int(line.split()[1])


@contextmanager
def peak_rss_growth() -> Iterator[Callable[[], int]]:
    """Reset the process's peak RSS (VmHWM); yield a function returning how far the peak rose above the start, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    start_kib = _status_kib("VmRSS")
    yield lambda: (_status_kib("VmHWM") - start_kib) * 1024


def client_for(session: aiohttp.ClientSession, url: str, **options: object) -> VoucherifyClient:
    """Return a Voucherify client for ``url`` that retries fast."""
    retry = RetryPolicy(max_attempts=3, backoff_max_s=0.01, backoff_multiplier_s=0.01)
    return VoucherifyClient(session, base_url=url, app_id="app-123", app_token=APP_TOKEN, retry=retry, **options)  # type: ignore[arg-type]


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run the real CLI to completion; return its status and its combined output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, env=cli_env(env), cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    watch_output(out.decode)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# --- redirects from Voucherify's address ------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_api_redirect_is_one_request_and_carries_no_token_elsewhere(servers, status):
    """A 3xx from the API is one request, not followed, a RedirectError naming the variable and the Location without its query."""
    other = await servers(answer())
    front = await servers(redirect(f"{other.url}/v1/moved?app_token=leak#frag", status))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RedirectError) as caught:
            await client_for(session, front.url).list_page(limit=1)
    assert len(front.requests) == 1
    assert other.requests == []
    assert "RELAY_VOUCHERIFY_API_URL" in str(caught.value)
    assert f"{other.url}/v1/moved" in str(caught.value)
    assert "leak" not in str(caught.value)
    assert "frag" not in str(caught.value)


async def test_relay_survives_an_api_redirect_and_recovers(standin, receiver, servers, tmp_path):
    """While the API address redirects, cycles fail with poll.failed and no token leaves; once it stops, events arrive."""
    other = await servers(answer())
    front = await servers(redirect(f"{other.url}/v1/async-actions?x=1"), fallback=proxy(standin.base_url))
    action = standin.add_action("VOUCHERS.IMPORT")
    settings = relay_env(tmp_path, standin, receiver, voucherify_api_url=front.url)
    with capture_logs() as logs:
        async with running(load_settings(settings)) as relay:
            await until(lambda: len(front.requests) >= 3)
            front.times = 0  # the proxy is fixed: later cycles reach the stand-in
            await baseline(relay)
            standin.complete_action(action)
            await until(lambda: len(receiver.delivered) == 1)
    assert other.requests == []
    failed = [e for e in logs if e["event"] == "poll.failed"]
    assert failed
    assert all("RELAY_VOUCHERIFY_API_URL" in e["caused_by"] and f"{other.url}/v1/async-actions" in e["caused_by"] for e in failed)
    assert "poll.crashed" not in [e["event"] for e in logs]


async def test_check_exits_78_when_the_api_redirects(servers, tmp_path):
    """`check` against a redirecting API address exits 78 naming RELAY_VOUCHERIFY_API_URL, and the other host sees nothing."""
    other = await servers(answer())
    front = await servers(redirect(f"{other.url}/v1/async-actions"))
    env = {"RELAY_ENV_FILE": str(tmp_path / "absent.env"), "RELAY_VOUCHERIFY_API_URL": front.url}
    env |= {"RELAY_VOUCHERIFY_APP_ID": "app-123", "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN}
    status, output = await run_cli("check", env=env, cwd=tmp_path)
    assert status == 78, output
    assert "RELAY_VOUCHERIFY_API_URL" in output
    assert "Traceback" not in output
    assert other.requests == []


async def test_control_characters_in_a_secret_make_check_exit_78(tmp_path):
    """An app token with CR/LF in it is refused by `check` with exit 78 naming the variable, no traceback, no echo."""
    env = {"RELAY_ENV_FILE": str(tmp_path / "absent.env"), "RELAY_VOUCHERIFY_APP_ID": "app-123"}
    env["RELAY_VOUCHERIFY_APP_TOKEN"] = f"{APP_TOKEN}\r\nX-Injected: 1"
    status, output = await run_cli("check", env=env, cwd=tmp_path)
    assert status == 78, output
    assert "RELAY_VOUCHERIFY_APP_TOKEN" in output
    assert "Traceback" not in output
    assert "X-Injected" not in output


# --- redirects from receivers ---------------------------------------------------------------


async def retried_twice(relay: Relay) -> bool:
    """Whether some pending delivery has failed at least twice."""
    return any(r.attempts >= 2 for r in await relay.stores.outbox.list(dead=False))


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirecting_receiver_is_a_failed_attempt(standin, receiver, servers, tmp_path, status):
    """A receiver answering 3xx leaves the row undelivered, the other host gets nothing, and the error names the redacted Location."""
    other = await servers(answer())
    hook = await servers(redirect(f"{other.url}/{SECRET_PATH}/?sig=abc", status))
    action = standin.add_action("VOUCHERS.IMPORT")
    env = relay_env(tmp_path, standin, receiver, webhook_url=f"{hook.url}/hooks/{SECRET_PATH}")
    async with running(load_settings(env)) as relay:
        await baseline(relay)
        standin.complete_action(action)
        await until(lambda: retried_twice(relay))
        rows = await relay.stores.outbox.list(dead=False)
    assert other.requests == []
    assert len(rows) == 1
    assert f"redirects to {other.url}/catch/…" in (rows[0].last_error or "")
    assert "s3cretpath" not in (rows[0].last_error or "")


async def test_a_redirecting_slack_webhook_is_not_followed(servers):
    """A Slack URL answering 307 is a failed, retryable attempt; the other host gets nothing; the detail is redacted."""
    other = await servers(answer())
    hook = await servers(redirect(f"{other.url}/services/T0/B0/s3cret"))
    settings = SinkSettings(kind="slack", url=SecretStr(f"{hook.url}/services/T1/B1/XXXXXXXXXXXX"))
    async with aiohttp.ClientSession() as session:
        result = await SlackSink("slack", settings, session, min_interval_s=0).send(sample_delivery())
    assert (result.delivered, result.permanent, result.redirect_to) == (False, False, f"{other.url}/services/…")
    assert other.requests == []
    assert "s3cret" not in result.detail


async def test_send_test_says_where_the_receiver_redirects(servers, tmp_path):
    """`send-test` against a redirecting receiver says to configure the (redacted) target instead, and fails."""
    other = await servers(answer())
    hook = await servers(redirect(f"{other.url}/{SECRET_PATH}", 301))
    env = {"RELAY_ENV_FILE": str(tmp_path / "absent.env"), "RELAY_WEBHOOK_URL": f"{hook.url}/hooks/{SECRET_PATH}"}
    status, output = await run_cli("send-test", env=env, cwd=tmp_path)
    assert status == 1, output
    assert f"the receiver redirects to {other.url}/catch/…; configure that URL instead" in output
    assert f"sink webhook (webhook {hook.url}/hooks/…" in output
    assert "s3cretpath" not in output
    assert other.requests == []


# --- endless and deep bodies ----------------------------------------------------------------


async def test_an_endless_receiver_answer_keeps_memory_bounded(standin, receiver, servers, tmp_path):
    """A sink whose receiver streams an endless 500 body costs little memory, and the other sink still gets every event."""
    hose = await servers(endless(500))
    actions = [standin.add_action("VOUCHERS.IMPORT") for _ in range(3)]
    env = relay_env(tmp_path, standin, receiver, sinks__hose__kind="webhook", sinks__hose__url=f"{hose.url}/hook")
    with peak_rss_growth() as growth:
        async with running(load_settings(env)) as relay:
            await baseline(relay)
            for action in actions:
                standin.complete_action(action)
            await until(lambda: len(receiver.delivered) == 3 and len(hose.requests) >= 6)
            pending = await relay.stores.outbox.list(dead=False)
        peak = growth()
    assert peak < RSS_BOUND, f"peak RSS grew {peak / MIB:.0f} MiB"
    assert {row.sink for row in pending} == {"hose"}
    assert all(row.last_error == "HTTP 500" for row in pending)
    print(f"endless receiver: peak RSS +{peak / MIB:.1f} MiB, {len(hose.requests)} attempts, {len(receiver.delivered)} delivered")


async def test_an_endless_api_body_is_a_bad_response_and_memory_stays_bounded(standin, receiver, servers, tmp_path):
    """An endless Voucherify body fails the cycle naming RELAY_API_MAX_RESPONSE_BYTES, memory stays bounded, later events arrive."""
    front = await servers(endless(200), fallback=proxy(standin.base_url), times=2)
    action = standin.add_action("VOUCHERS.IMPORT")
    env = relay_env(tmp_path, standin, receiver, voucherify_api_url=front.url, api_max_response_bytes=str(2 * MIB))
    with capture_logs() as logs, peak_rss_growth() as growth:
        async with running(load_settings(env)) as relay:
            await baseline(relay)
            standin.complete_action(action)
            await until(lambda: len(receiver.delivered) == 1)
        peak = growth()
    assert peak < RSS_BOUND, f"peak RSS grew {peak / MIB:.0f} MiB"
    failed = [e["caused_by"] for e in logs if e["event"] == "poll.failed"]
    assert len(failed) == 2, failed
    assert all(f"response body larger than RELAY_API_MAX_RESPONSE_BYTES ({2 * MIB} bytes)" in f for f in failed)
    print(f"endless API body: peak RSS +{peak / MIB:.1f} MiB, {len(front.requests)} requests, {len(receiver.delivered)} delivered")


async def test_a_huge_content_length_is_refused_before_reading(servers):
    """A response announcing more than the cap is refused at once, without reading its body."""
    front = await servers(endless(200, content_length=10 * 1024 * MIB))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(BadResponseError, match=r"larger than RELAY_API_MAX_RESPONSE_BYTES \(1048576 bytes\)"):
            await asyncio.wait_for(client_for(session, front.url, max_response_bytes=MIB).list_page(limit=1), 2)
    assert len(front.requests) == 1


async def test_deeply_nested_json_is_a_bad_response(servers):
    """A detail nested 100,000 levels deep is a BadResponseError saying so, not a RecursionError that aborts the cycle."""
    front = await servers(nested_json(100_000))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(BadResponseError, match="nested too deeply"):
            await client_for(session, front.url).get_action("aa_0123")
    assert len(front.requests) == 1


def sample_delivery() -> Delivery:
    """Return a delivery of one sample event."""
    data = {"id": "aa_1", "type": "VOUCHERS.IMPORT", "status": "DONE", "outcome": "success"}
    body = json.dumps({"id": "evt_1", "type": "async_action.completed", "timestamp": "2024-01-01T00:00:00Z", "data": data}).encode()
    return Delivery(row_id=1, event_id="evt_1", event_type="async_action.completed", sink="slack", action_id="aa_1", body=body, attempts=0, created_at=0.0)
