"""Run the relay as a service: signals, systemd readiness and watchdog, clean shutdown.

SIGTERM or SIGINT: stop polling, let in-flight sends finish within the grace period
(20 s), persist, exit 0. A second SIGTERM/SIGINT during that grace period exits at once
(unsent deliveries stay due in the outbox; nothing is lost). SIGHUP is ignored with a
log line: settings are read once at start, so restart the service to apply new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import structlog

from daemon import systemd
from daemon.app import Relay
from daemon.bootstrap import build_relay
from daemon.settings import RelaySettings
from daemon.voucherify import RetryPolicy

log = structlog.get_logger("daemon.lifecycle")


async def run_relay(settings: RelaySettings, *, stop: asyncio.Event | None = None, retry: RetryPolicy | None = None) -> None:
    """Run the relay until SIGTERM/SIGINT (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    relay = await build_relay(settings, retry=retry)
    await relay.start()
    systemd.notify(systemd.READY + "\n" + systemd.status("polling Voucherify"))
    watchdog = _start_watchdog(relay)
    try:
        await stop.wait()
        log.info("relay.stopping")
        systemd.notify(systemd.STOPPING)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await relay.stop()


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_stop(signum: int) -> None:
        if stop.is_set():
            log.warning("relay.forced_exit", signal=signal.Signals(signum).name, hint="unsent deliveries stay due in the outbox")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("signal.ignored", signal="SIGHUP", hint="settings are read at start: restart to apply changes"))


def _start_watchdog(relay: Relay) -> asyncio.Task[None] | None:
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return None
    return asyncio.create_task(systemd.run_watchdog(relay.alive, interval_s=interval), name="systemd-watchdog")
