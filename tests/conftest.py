"""Shared fixtures: a Voucherify stand-in, a webhook receiver, settings for both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from daemon.settings import RelaySettings, load_settings
from daemon.standin import VoucherifyStandIn
from tests.fakes.receiver import RecordingReceiver

APP_TOKEN = "tok_live_s3cr3t_0123456789abcdef"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def standin() -> AsyncIterator[VoucherifyStandIn]:
    """A running Voucherify stand-in."""
    server = VoucherifyStandIn(app_id="app-123", app_token=APP_TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingReceiver]:
    """A running webhook receiver."""
    hook = RecordingReceiver()
    await hook.start()
    yield hook
    await hook.close()


def relay_env(tmp_path: Path, standin: VoucherifyStandIn, receiver: RecordingReceiver, **overrides: str) -> dict[str, str]:
    """Return the environment a test relay runs with."""
    env = {
        "RELAY_ENV_FILE": str(tmp_path / "absent.env"),
        "RELAY_VOUCHERIFY_API_URL": standin.base_url,
        "RELAY_VOUCHERIFY_APP_ID": "app-123",
        "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "RELAY_POLL_INTERVAL": "0.1",
        "RELAY_STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "RELAY_WEBHOOK_URL": receiver.url,
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAY_DELIVERY_RETRY_MAX_DELAY": "0.2",
        "RELAY_LOG_FORMAT": "json",
    }
    env.update({f"RELAY_{k.upper()}": v for k, v in overrides.items()})
    return env


@pytest.fixture
def make_settings(tmp_path: Path, standin: VoucherifyStandIn, receiver: RecordingReceiver) -> Callable[..., RelaySettings]:
    """Build settings pointing at the stand-in and the receiver, with overrides."""

    def build(**overrides: str) -> RelaySettings:
        return load_settings(relay_env(tmp_path, standin, receiver, **overrides))

    return build


async def until(predicate: Callable[[], bool], *, timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    """Wait until ``predicate()`` holds, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
