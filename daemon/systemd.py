"""systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per message.

No dependency: the protocol is "send ``KEY=VALUE`` lines in one datagram to the unix socket
named by ``$NOTIFY_SOCKET``" (a path, or ``@name`` for the abstract namespace), and the
``sdnotify`` package adds nothing to these few lines (its last release was in 2017).
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op returning False.

The relay sends ``READY=1`` once started, ``WATCHDOG=1`` every half ``WatchdogSec`` while
its scheduler is alive (so a wedged relay stops pinging and systemd restarts it),
``STATUS=...`` lines for ``systemctl status``, and ``STOPPING=1`` on shutdown.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = structlog.get_logger("daemon.systemd")
READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def status(text: str) -> str:
    """Return a ``STATUS=`` message (one line) for ``systemctl status``."""
    return "STATUS=" + " ".join(text.split())


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines) to systemd; return whether it was sent."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):  # unset, or a kind we do not speak (vsock:...)
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("systemd.notify_failed", state=state.split("=", 1)[0], caused_by=exc.strerror or repr(exc))
        return False
    return True


def watchdog_interval_s(*, environ: Mapping[str, str] | None = None) -> float | None:
    """Return how often to send ``WATCHDOG=1``: half of ``WatchdogSec`` (sd_watchdog_enabled(3)); None when off."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):  # meant for another process (we were forked or exec'ed)
        return None
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2_000_000


async def run_watchdog(
    alive: Callable[[], tuple[bool, str]],
    *,
    interval_s: float,
    send: Callable[[str], bool] = notify,
) -> None:
    """Ping the watchdog every ``interval_s`` while ``alive()`` holds; stop pinging (and say why) while it does not."""
    withheld = False
    while True:
        ok, detail = alive()
        if ok:
            send(WATCHDOG)
            if withheld:
                log.info("watchdog.resumed")
        elif not withheld:
            log.error("watchdog.withheld", detail=detail, hint="systemd restarts the relay if this lasts WatchdogSec")
            send(status(f"unhealthy: {detail}"))
        withheld = not ok
        await asyncio.sleep(interval_s)
