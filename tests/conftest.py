"""Shared fixtures: a Voucherify stand-in, a webhook receiver, settings for both."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from bench.pg_database import temp_database
from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.demo.receiver import RecordingReceiver
from daemon.demo.standin import VoucherifyStandIn
from daemon.settings import RelaySettings, load_settings
from daemon.voucherify import RetryPolicy

if TYPE_CHECKING:
    from daemon.app import Relay
from tests.fakes.slack import HOOK_PATH as FAKE_SLACK_HOOK_PATH
from tests.fakes.slack_web import BOT_TOKEN as FAKE_SLACK_BOT_TOKEN

APP_TOKEN = "tok_live_s3cr3t_0123456789abcdef"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WATCH_TOKEN = "watch-token-0123456789abcdef"
PG_PASSWORD = "pg-s3cret-passw0rd-0123"  # what tests put in PGPASSWORD
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"  # a placeholder, not a real hook


@pytest.fixture
async def standin() -> AsyncIterator[VoucherifyStandIn]:
    """Run a Voucherify stand-in."""
    server = VoucherifyStandIn(app_id="app-123", app_token=APP_TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingReceiver]:
    """Run a webhook receiver."""
    hook = RecordingReceiver()
    await hook.start()
    yield hook
    await hook.close()


def relay_env(tmp_path: Path, standin: VoucherifyStandIn, receiver: RecordingReceiver, **overrides: str) -> dict[str, str]:
    """Return the environment a test relay runs with (the project ``default`` on ``standin``)."""
    single = {"voucherify_api_url": standin.base_url, "voucherify_app_id": "app-123", "voucherify_app_token": APP_TOKEN}
    return relay_base_env(tmp_path, receiver, **(single | overrides))


def relay_base_env(tmp_path: Path, receiver: RecordingReceiver, **overrides: str) -> dict[str, str]:
    """Return the environment a test relay runs with, without a project: add RELAY_VOUCHERIFY_* or RELAY_PROJECTS__*."""
    env = {
        "RELAY_ENV_FILE": str(tmp_path / "absent.env"),
        "RELAY_POLL_INTERVAL": "0.1",
        "RELAY_IDLE_POLL_INTERVAL": "0.1",
        "RELAY_STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "RELAY_WEBHOOK_URL": receiver.url,
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAY_DELIVERY_RETRY_MAX_DELAY": "0.2",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_HTTP_LISTEN": "off",
    }
    env.update({f"RELAY_{k.upper()}": v for k, v in overrides.items()})
    return env


@pytest.fixture
def make_settings(tmp_path: Path, standin: VoucherifyStandIn, receiver: RecordingReceiver) -> Callable[..., RelaySettings]:
    """Build settings pointing at the stand-in and the receiver, with overrides."""

    def build(**overrides: str) -> RelaySettings:
        return load_settings(relay_env(tmp_path, standin, receiver, **overrides))

    return build


async def until(predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Wait until ``predicate()`` holds (a plain or an awaitable answer), failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = predicate()
        if await answer if inspect.isawaitable(answer) else answer:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


# --- PostgreSQL: a database of its own per test --------------------------------------

PG_ENV = "RELAY_TEST_POSTGRES_URL"
PG_SKIP = f"PostgreSQL tests skipped: {PG_ENV} is not set"


def pg_server_url() -> str | None:
    """Return the server URL PostgreSQL tests use, or None when they are to be skipped."""
    return os.environ.get(PG_ENV) or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without RELAY_TEST_POSTGRES_URL, leave out every PostgreSQL test (those marked ``postgres`` or using ``pg_url``)."""
    for item in items:
        if {"pg_url", "pg_database"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
    if pg_server_url() is not None:
        return
    left_out = [item for item in items if item.get_closest_marker("postgres")]
    if left_out:
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]
        config.hook.pytest_deselected(items=left_out)
        config.stash[_PG_LEFT_OUT] = len(left_out)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in one line that the PostgreSQL tests did not run, and why (with xdist the workers left them out, so no count here)."""
    if pg_server_url() is None:
        count = terminalreporter.config.stash.get(_PG_LEFT_OUT, 0)
        terminalreporter.write_line(PG_SKIP + (f" ({count} tests left out)" if count else ""), yellow=True)


_PG_LEFT_OUT = pytest.StashKey[int]()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """Create a uniquely named database for one test module on RELAY_TEST_POSTGRES_URL's server; drop it after the module.

    Without the variable the tests are skipped (one reason line for all of them); with it,
    an unreachable server fails them loudly. One database per module, not per test:
    CREATE DATABASE costs about a second here, emptying a schema a few milliseconds.
    """
    server = pg_server_url()
    if server is None:
        pytest.skip(PG_SKIP)
    with temp_database(server, prefix="relay_test") as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """Return the URL of the module's database, emptied for this test (no tables, no migrations applied)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database


# --- secrets never reach output -----------------------------------------------------

KNOWN_SECRETS = {
    "app token": APP_TOKEN,
    "webhook secret": WEBHOOK_SECRET,
    "webhook secret key": WEBHOOK_SECRET.removeprefix("whsec_"),
    "Slack URL": SLACK_URL,
    "watch token": WATCH_TOKEN,
    "PGPASSWORD": PG_PASSWORD,
    "Slack URL token": SLACK_URL.rsplit("/", 1)[-1],
    "FakeSlack hook token": FAKE_SLACK_HOOK_PATH.rsplit("/", 1)[-1],
    "FakeSlackWeb bot token": FAKE_SLACK_BOT_TOKEN,
}
_watched: list[Callable[[], str]] = []


def watch_output(source: Callable[[], str]) -> None:
    """Have the secret scan read ``source()`` after the test too (a subprocess's collected output)."""
    _watched.append(source)


def find_secrets(text: str, secrets: dict[str, str] | None = None) -> list[str]:
    """Return the names of the known test secrets that occur in ``text``."""
    return [name for name, value in (secrets or KNOWN_SECRETS).items() if value in text]


@pytest.fixture(autouse=True)
def no_secret_in_output(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test whose captured stdout/stderr, log records or watched subprocess output holds a test secret."""
    uses_sys = {"capsys", "capsysbinary"} & set(request.fixturenames)
    capture = request.getfixturevalue(uses_sys.pop() if uses_sys else "capfd")
    _watched.clear()
    yield
    out, err = capture.readouterr()  # pytest has already put the call's output in its report
    records = [caplog.handler.format(r) for phase in ("setup", "call") for r in caplog.get_records(phase)]  # type: ignore[arg-type]
    sources = {"stdout": str(out), "stderr": str(err), "log records": "\n".join(records)}
    sources |= {f"watched output {n}": source() for n, source in enumerate(_watched)}
    _watched.clear()
    leaks = [f"{name} in {where}" for where, text in sources.items() for name in find_secrets(text)]
    if leaks:
        pytest.fail("secret leaked: " + ", ".join(leaks), pytrace=False)


async def outbox_has(relay: Relay, **figures: int) -> bool:
    """Tell whether the running relay's outbox shows these figures (``pending=0``, ``dead=1``)."""
    stats = await relay.stores.outbox.stats()
    return all(getattr(stats, name) == value for name, value in figures.items())


FAST = RetryPolicy(max_attempts=3, backoff_max_s=0.05, backoff_multiplier_s=0.01)


@asynccontextmanager
async def running(settings: RelaySettings) -> AsyncIterator[Relay]:
    """Run a relay for the body of the block."""
    relay = await build_relay(settings, retry=FAST)
    await relay.start()
    watch_output(lambda: relay.metrics.render().decode())
    try:
        yield relay
    finally:
        await relay.stop(grace_s=2)


async def baseline(relay: Relay) -> None:
    """Wait for the first poll (the baseline) to complete."""
    await until(lambda: relay.last_poll is not None)
