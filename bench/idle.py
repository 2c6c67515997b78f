"""Idle cost: resident memory and CPU of the real ``voucherify-relay run`` with nothing to do.

Three processes: the stand-in (``python -m daemon.demo.standin --examples``: 22 finished
actions, nothing in flight), a webhook receiver, and the relay as the CLI runs it
(``python -m daemon run``, JSON logs to a file). A first run takes the baseline; the
measured run restarts on the same state and, after its first poll and a short settle, the benchmark samples ``/proc/<pid>/status`` VmRSS every second and
``/proc/<pid>/task/*/schedstat`` (CPU nanoseconds) at both ends of the window. Runs with the shipped
defaults (poll 30 s, idle 300 s) and, for the cost of a poll loop, polling every second.

    python -m bench.idle [--seconds 30]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    APP_ID,
    APP_TOKEN,
    ROOT,
    Section,
    base_parser,
    child_env,
    child_process,
    env_float,
    finish,
    fmt,
    free_port,
    markdown_table,
    mean,
    receiver_process,
    relay_env,
    rss_kib,
    wait_for_port,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0
CONFIGS: tuple[tuple[str, dict[str, str], float], ...] = (
    ("defaults (poll 30 s, idle 300 s)", {}, 1.0),
    ("polling every 1 s", {"RELAY_POLL_INTERVAL": "1", "RELAY_IDLE_POLL_INTERVAL": "1"}, 0.67),
)


def cpu_seconds(pid: int) -> float:
    """Return the CPU time a process has used, in seconds, to the nanosecond where the kernel says so.

    Sums ``/proc/<pid>/task/*/schedstat`` (nanoseconds on CPU per live thread); falls back to
    utime + stime from ``/proc/<pid>/stat`` (clock ticks, 10 ms) when schedstat is missing.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat(5)


def processes_cpu_s(pids: list[int]) -> float:
    """Return the CPU time these processes have used so far; a process that is gone counts 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def peak_rss_kib(pid: int) -> int:
    """Return VmHWM (peak resident set) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def count_lines(path: Path, needle: str) -> int:
    """Count log lines mentioning ``needle``."""
    return sum(needle in line for line in path.read_text(errors="replace").splitlines()) if path.exists() else 0


def wait_for_poll(proc: subprocess.Popen[bytes], log_path: Path, *, timeout_s: float = 30.0) -> None:
    """Wait until the relay logged a completed poll, or raise with its output."""
    deadline = time.monotonic() + timeout_s
    while count_lines(log_path, '"poll.completed"') == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is not None or count_lines(log_path, '"poll.completed"') == 0:
        msg = f"relay did not complete a poll: {log_path.read_text(errors='replace')[-2000:]}"
        raise RuntimeError(msg)


def run_config(api_url: str, hook_url: str, overrides: dict[str, str], *, window_s: float) -> dict[str, Any]:
    """Take the baseline in a first run, restart on the same state, then sample the relay over ``window_s``.

    Measuring a restart, not the first start, because the first start's baseline stores
    every listed action and ``Relay._pace`` counts that as activity: it then polls at the
    fast pace for one idle interval (300 s by default) before settling.
    """
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        env = child_env(relay_env(tmp, api_url, hook_url, overrides, http_listen=f"127.0.0.1:{free_port()}"))
        first_log = Path(tmp) / "first.log"
        with first_log.open("wb") as log, child_process([sys.executable, "-m", "daemon", "run"], env=env, cwd=Path(tmp), stdout=log) as proc:
            wait_for_poll(proc, first_log)
        log_path = Path(tmp) / "relay.log"
        with log_path.open("wb") as log, child_process([sys.executable, "-m", "daemon", "run"], env=env, cwd=Path(tmp), stdout=log) as proc:
            wait_for_poll(proc, log_path)
            time.sleep(SETTLE_S)
            startup_cpu = cpu_seconds(proc.pid)
            polls_before = count_lines(log_path, '"poll.completed"')
            samples, started = [], time.monotonic()
            for _ in range(int(window_s) + 1):
                samples.append(rss_kib(proc.pid))
                remaining = started + window_s - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(1.0, remaining))
            elapsed = time.monotonic() - started
            used = cpu_seconds(proc.pid) - startup_cpu
            polls = count_lines(log_path, '"poll.completed"') - polls_before
            peak = peak_rss_kib(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                code = None
    return {
        "rss_mib_mean": mean(samples) / 1024,
        "rss_mib_max": max(samples) / 1024,
        "hwm_mib": peak / 1024,
        "cpu_pct": used / elapsed * 100,
        "cpu_ms": used * 1000,
        "window_s": elapsed,
        "polls": polls,
        "startup_cpu_s": startup_cpu,
        "exit_code": code,
    }


def import_floor_mib() -> float:
    """Return the resident memory of an interpreter that has only imported the daemon (its dependencies' share)."""
    code = "import daemon.cli, daemon.app, sys; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return rss_kib(proc.pid) / 1024
    finally:
        proc.communicate(timeout=10)


def measure(*, window_s: float) -> Section:
    """Run each configuration against one stand-in and one receiver."""
    port = free_port()
    results = {}
    standin = [sys.executable, "-m", "daemon.demo.standin", "--port", str(port), "--examples", "--app-id", APP_ID, "--app-token", APP_TOKEN]
    with child_process(standin, cwd=ROOT, env=child_env()), receiver_process() as hook_url:
        wait_for_port(port)
        for name, overrides, share in CONFIGS:
            seconds = max(5.0, window_s * share)
            print(f"idle: {name}: sampling {seconds:.0f} s ...", flush=True)
            results[name] = run_config(f"http://127.0.0.1:{port}", hook_url, overrides, window_s=seconds)
    return build_section(results, floor_mib=import_floor_mib())


def build_section(results: dict[str, dict[str, Any]], *, floor_mib: float) -> Section:
    """Tabulate the idle figures."""
    header = [
        "configuration",
        "window s",
        "polls in window",
        "CPU %",
        "CPU ms in window",
        "CPU ms per poll (incl. ticks)",
        "RSS MiB (mean)",
        "RSS MiB (max)",
        "peak RSS (VmHWM) MiB",
        "start-up CPU s",
        "exit on SIGTERM",
    ]
    rows, summary = [], []
    for name, r in results.items():
        per_poll = r["cpu_ms"] / r["polls"] if r["polls"] else float("nan")
        rows.append(
            [
                name,
                fmt(r["window_s"], 1),
                r["polls"],
                fmt(r["cpu_pct"], 3),
                fmt(r["cpu_ms"], 0),
                fmt(per_poll, 1),
                fmt(r["rss_mib_mean"], 1),
                fmt(r["rss_mib_max"], 1),
                fmt(r["hwm_mib"], 1),
                fmt(r["startup_cpu_s"], 2),
                r["exit_code"],
            ]
        )
        summary.append([f"idle RSS, {name}", f"{fmt(r['rss_mib_mean'], 1)} MiB", "", ""])
        if "defaults" in name:
            summary.append([f"idle CPU, {name}", f"{fmt(r['cpu_pct'], 3)} %", "near 0", "meets" if r["cpu_pct"] < 0.5 else "MISSES"])
        else:
            summary.append([f"CPU, {name}", f"{fmt(r['cpu_pct'], 3)} %", "", ""])
    summary.append(["RSS of the interpreter after importing the daemon only", f"{fmt(floor_mib, 1)} MiB", "", ""])
    markdown = "\n\n".join(
        [
            (
                "The real CLI (`python -m daemon run`) against the stand-in with 22 finished actions and nothing in flight. A first run takes "
                "the baseline and is stopped; the measured run restarts on the same state and is sampled after "
                f"its first poll and {SETTLE_S:.0f} s of settling. CPU is the time on CPU from `/proc/<pid>/task/*/schedstat` "
                "over the window (the dispatcher's "
                '1-second tick, the scheduler and any polls); "start-up CPU" is what the process used before the window (interpreter, imports, first poll).'
            ),
            markdown_table(header, rows),
            (
                "A restart is measured because a *first* start is not idle for a while: its baseline stores every listed action, "
                "`Relay._pace` counts those as activity, and the relay polls at the fast pace (30 s) for one idle interval (300 s) "
                "before settling."
            ),
            (
                f"For scale: an interpreter that has only imported the daemon (`import daemon.cli, daemon.app`: aiohttp, pydantic, "
                f"pydantic-settings, APScheduler, structlog, tenacity) is {fmt(floor_mib, 1)} MiB resident, about what the idle relay "
                "holds: its memory is its dependencies' code, not its state."
            ),
        ]
    )
    return Section(name="idle", title="Idle relay", summary=summary, markdown=markdown, raw=results | {"import_floor_mib": floor_mib})


def main() -> None:
    """Run the idle benchmark and print its figures."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=env_float("BENCH_IDLE_SECONDS", 30.0), help="sampling window for the defaults run (env BENCH_IDLE_SECONDS)"
    )
    args = parser.parse_args()
    section = measure(window_s=args.seconds)
    print(section.markdown)
    finish(section, args.json)


if __name__ == "__main__":
    main()
