"""Shared helpers for the benchmarks: results, tables, receivers, quiet logging, processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from the repo root
    sys.path.insert(0, str(ROOT))

LOCALHOST = "127.0.0.1"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a bench-only key for a loopback receiver
APP_ID, APP_TOKEN = "demo-app", "demo-token"  # the stand-in's demo credentials


@dataclass
class Section:
    """One benchmark's outcome: summary rows for the overall table and a markdown section."""

    name: str
    title: str
    summary: list[list[str]] = field(default_factory=list)  # [metric, value, target, verdict]
    markdown: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize for run_all."""
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> Section:
        """Read what ``to_json`` wrote."""
        return cls(**json.loads(text))


def env_int(name: str, default: int) -> int:
    """Read an integer knob from the environment."""
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    """Read a float knob from the environment."""
    return float(os.environ.get(name, default))


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """Return an argument parser with the shared ``--json`` option."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file (run_all uses it)")
    return parser


def finish(section: Section, json_path: Path | None) -> None:
    """Print a section's figures and optionally store them for run_all."""
    print()
    print(f"== {section.title} ==")
    print(format_table(["metric", "value", "target", "verdict"], section.summary))
    if json_path is not None:
        json_path.write_text(section.to_json(), encoding="utf-8")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a plain-text table."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) by linear interpolation; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def mean(values: Sequence[float]) -> float:
    """Return the arithmetic mean; nan when empty."""
    return sum(values) / len(values) if values else math.nan


def fmt(value: float, digits: int = 2) -> str:
    """Format a number with thousands separators."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def free_port() -> int:
    """Return a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port, or raise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    msg = f"nothing listening on {LOCALHOST}:{port} after {timeout_s}s"
    raise TimeoutError(msg)


@contextlib.contextmanager
def child_process(
    args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, stdout: IO[Any] | int | None = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a child process for the block; stop it (by its pid) afterwards."""
    proc = subprocess.Popen(list(args), env=env, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT)  # noqa: S603 - our own interpreter and modules
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the child, then SIGKILL it if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


@contextlib.contextmanager
def receiver_process(*, status: int = 204, delay_ms: float = 0.0) -> Iterator[str]:
    """Run the shared receiver (daemon/demo/receiver.py) in its own process, answering after ``delay_ms``; yield its hook URL."""
    port = free_port()
    args = [sys.executable, "-m", "daemon.demo.receiver", "--port", str(port), "--status", str(status), "--delay-ms", str(delay_ms)]
    with child_process(args, cwd=ROOT, env=child_env()):
        wait_for_port(port)
        yield f"http://{LOCALHOST}:{port}/hook"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return an environment for children: no RELAY_* from the caller, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def quiet_logs(level: str = "info") -> None:
    """Configure the daemon's logging as in production (JSON lines), written to /dev/null.

    The per-cycle and per-delivery log lines are part of the daemon's real cost, so they
    are rendered, just not shown.
    """
    from daemon.logs import configure_logging  # noqa: PLC0415

    configure_logging(level=level, fmt="json", secrets=[APP_TOKEN], stream=open(os.devnull, "w"))  # noqa: SIM115, PTH123 - lives as long as the process


def machine() -> dict[str, str]:
    """Describe the machine the figures come from."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_average() -> str:
    """Return the 1/5/15-minute load averages (the machine may be shared)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call fn; return its result and the wall seconds it took."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def sample_events(count: int, *, prefix: str = "aa_bench", start: int = 0) -> list[Any]:
    """Return ``count`` realistic completion events (the documented examples, rotated, fresh ids)."""
    from daemon.demo.wire import load_examples  # noqa: PLC0415 - the documented bodies, read-only
    from daemon.normalize import normalize  # noqa: PLC0415

    examples = list(load_examples().values())
    detected = datetime.now(UTC)
    events = []
    for n in range(start, start + count):
        action = dict(examples[n % len(examples)])
        action["id"] = f"{prefix}{n:012x}"
        events.append(normalize(action, detected_at=detected))
    return events


def rss_kib(pid: int | str = "self") -> int:
    """Return a process's resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def relay_env(tmp: str, api_url: str, hook_url: str, overrides: dict[str, str], *, http_listen: str = "off") -> dict[str, str]:
    """Return a benchmark relay's environment: the stand-in, one receiver, a state file in ``tmp``, JSON logs."""
    return {
        "RELAY_ENV_FILE": str(Path(tmp) / "absent.env"),
        "RELAY_VOUCHERIFY_API_URL": api_url,
        "RELAY_VOUCHERIFY_APP_ID": APP_ID,
        "RELAY_VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "RELAY_STATE_URL": f"sqlite:///{tmp}/state.db",
        "RELAY_WEBHOOK_URL": hook_url,
        "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_HTTP_LISTEN": http_listen,  # "off" by default: 127.0.0.1:9464 may be taken by another relay on this machine
        **overrides,
    }
