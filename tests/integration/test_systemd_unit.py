"""The systemd unit: it verifies, it carries the promised directives, its sandbox fits the relay; sd_notify works.

The sandbox test runs the real relay under the unit's seccomp-based settings, emulated with
libseccomp the way systemd applies them (SystemCallFilter=, MemoryDenyWriteExecute=,
RestrictAddressFamilies=, NoNewPrivileges=), because no systemd runs here to start the unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from daemon.systemd import READY, STOPPING, WATCHDOG, notify, run_watchdog, status, watchdog_interval_s
from tests.conftest import relay_env, until
from tests.e2e.conftest import cli_env

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "systemd" / "voucherify-relay.service"
ANALYZE = shutil.which("systemd-analyze")
SECCOMP = ctypes.util.find_library("seccomp")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
needs_seccomp = pytest.mark.skipif(ANALYZE is None or SECCOMP is None or sys.platform != "linux", reason="needs Linux, libseccomp and systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Return {section: {key: [values in order]}} of a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit passes `systemd-analyze verify` without a warning (ExecStart pointed at an existing binary)."""
    text = UNIT.read_text(encoding="utf-8").replace("/opt/voucherify-relay/venv/bin/voucherify-relay", sys.executable)
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/opt/voucherify-relay/venv/bin/voucherify-relay run"),
        ("WatchdogSec", "60"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "voucherify-relay"),
        ("EnvironmentFile", "/etc/voucherify-relay/relay.env"),
        ("LoadCredential", "app-token:/etc/voucherify-relay/app-token"),
        ("Environment", "RELAY_VOUCHERIFY_APP_TOKEN_FILE=%d/app-token"),
        ("Environment", "RELAY_STATE_URL=sqlite:///%S/voucherify-relay/relay.db"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "30"),
        ("UMask", "0077"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
    ],
)
def test_unit_has_each_promised_directive(key, value):
    """The unit carries every directive the deployment docs promise, with its value."""
    assert value in SERVICE.get(key, []), f"{key}={value} missing from {UNIT.name}"


def test_stop_timeout_leaves_room_for_the_grace_period():
    """TimeoutStopSec gives the relay more than its 20 s delivery grace period before systemd SIGKILLs it."""
    from daemon.app import SHUTDOWN_GRACE_S  # noqa: PLC0415 - the app is imported only for this constant

    assert float(SERVICE["TimeoutStopSec"][0]) > SHUTDOWN_GRACE_S + 5


# --- sd_notify -------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """Bind a unix datagram socket standing in for systemd's, at a short path (AF_UNIX paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="sd", dir="/tmp") as folder, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = str(Path(folder) / "notify")
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path


def test_notify_sends_one_datagram_to_the_socket_path(notify_socket):
    """notify() sends its lines as one datagram to $NOTIFY_SOCKET and says it did."""
    sock, path = notify_socket
    assert notify(READY + "\n" + status("polling\nevery 30s"), environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=polling every 30s"
    assert notify(STOPPING, environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_reaches_an_abstract_socket():
    """A $NOTIFY_SOCKET starting with @ names the abstract namespace."""
    name = f"voucherify-relay-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify(WATCHDOG, environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("address", ["", "relative/path", "vsock:2:1234", "/nonexistent/notify"])
def test_notify_without_a_usable_socket_is_a_quiet_no_op(address):
    """Outside systemd, or with a socket that is gone, notify() returns False and never raises."""
    assert notify(READY, environ={"NOTIFY_SOCKET": address} if address else {}) is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec_for_this_process(environ, expected):
    """The ping interval is half of WATCHDOG_USEC, and none when the watchdog is off or meant for another PID."""
    assert watchdog_interval_s(environ=environ) == expected


async def test_watchdog_pings_only_while_alive():
    """run_watchdog sends WATCHDOG=1 while alive() holds, withholds it (with a STATUS line) while not, and resumes."""
    answers = iter([(True, "ok"), (False, "no scheduler tick for 45s"), (False, "still"), (True, "ok")])
    sent: list[str] = []
    task = asyncio.create_task(run_watchdog(lambda: next(answers, (True, "ok")), interval_s=0.001, send=lambda s: sent.append(s) or True))
    await until(lambda: len(sent) >= 4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sent[:3] == [WATCHDOG, "STATUS=unhealthy: no scheduler tick for 45s", WATCHDOG]


# --- the unit's sandbox, emulated ------------------------------------------------------

ALLOW, KILL_PROCESS, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
CMP_EQ, CMP_GE, CMP_MASKED_EQ = 4, 5, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
# SQLite chowns its journal to the database's owner only when it runs as root; the service never
# does (DynamicUser), but this test may. @chown is outside the filter (in @privileged): refuse it.
CHOWN = ("chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32")


class ArgCmp(ctypes.Structure):
    """libseccomp's struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def syscall_groups() -> dict[str, list[str]]:
    """Return systemd's syscall groups (@name -> members, groups unexpanded), from systemd-analyze."""
    out = subprocess.run([str(ANALYZE), "syscall-filter"], capture_output=True, text=True, check=True, timeout=30).stdout  # noqa: S603
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        item = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(item, [])
        elif not item:
            current = None
        elif current is not None and not item.startswith("#"):
            current.append(item)
    return groups


def allowed_syscalls(filters: list[str]) -> list[str]:
    """Resolve the unit's SystemCallFilter= lines (allow list, then ~deny lists) to syscall names."""
    groups = syscall_groups()

    def expand(items: list[str]) -> set[str]:
        return set().union(*(expand(groups[i]) if i.startswith("@") else {i} for i in items)) if items else set()

    allowed: set[str] = set()
    for line in filters:
        if line.startswith("~"):
            allowed -= expand(line[1:].split())
        else:
            allowed |= expand(line.split())
    return sorted(allowed)


def exec_sandboxed() -> None:
    """In a child: load the unit-like seccomp filters, then exec sys.argv[1:] (filters survive execve)."""
    lib = ctypes.CDLL(SECCOMP, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    def load(default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]) -> None:
        ctx = lib.seccomp_init(default)
        for action, name, cmps in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number >= 0:
                array = (ArgCmp * max(1, len(cmps)))(*(ArgCmp(*c) for c in cmps))
                if lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array) != 0:
                    raise SystemExit(f"seccomp_rule_add {name} failed")
        if lib.seccomp_load(ctx) != 0:
            raise SystemExit(77)  # seccomp unavailable here (nested sandbox): the test skips

    families = {int(f) for f in os.environ.pop("SANDBOX_FAMILIES").split()}
    syscalls = json.loads(os.environ.pop("SANDBOX_SYSCALLS"))
    # MemoryDenyWriteExecute=yes, as systemd's seccomp_memory_deny_write_execute() does it
    wx = PROT_WRITE | PROT_EXEC
    load(
        ALLOW,
        [
            (ERRNO | errno.EPERM, "mmap", [(2, CMP_MASKED_EQ, wx, wx)]),
            (ERRNO | errno.EPERM, "mprotect", [(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (ERRNO | errno.EPERM, "pkey_mprotect", [(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (ERRNO | errno.EPERM, "shmat", [(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
        ],
    )
    # RestrictAddressFamilies=
    refused = [(ERRNO | errno.EAFNOSUPPORT, "socket", [(0, CMP_EQ, f, 0)]) for f in range(64) if f not in families]
    load(ALLOW, [*refused, (ERRNO | errno.EAFNOSUPPORT, "socket", [(0, CMP_GE, 64, 0)])])
    # SystemCallFilter= with systemd's default action: kill
    load(KILL_PROCESS, [(ALLOW, name, []) for name in syscalls] + [(ERRNO | errno.EPERM, name, []) for name in CHOWN])
    os.execv(sys.argv[1], sys.argv[1:])  # noqa: S606 - exec the target under the filters


def serve_relay() -> None:
    """In the sandboxed child: the relay with its health listener and sd_notify, as the wired app will run."""
    from daemon.health import HealthServer  # noqa: PLC0415
    from daemon.lifecycle import run_relay  # noqa: PLC0415 - child process only
    from daemon.logs import configure_logging  # noqa: PLC0415
    from daemon.metrics import RelayMetrics  # noqa: PLC0415
    from daemon.settings import load_settings  # noqa: PLC0415

    class AlwaysUp:
        def alive(self) -> tuple[bool, str]:
            return True, "up"

        def ready(self) -> tuple[bool, str]:
            return True, "up"

    async def main() -> None:
        settings = load_settings()
        configure_logging(level="info", fmt="json", secrets=settings.secret_values())
        server = HealthServer(AlwaysUp(), RelayMetrics())
        port = await server.start("127.0.0.1", 0)
        notify(READY + "\n" + status(f"port {port}"))
        try:
            await run_relay(settings)
        finally:
            notify(STOPPING)
            await server.close()

    asyncio.run(main())


PROBE = """
import errno, mmap, os, socket
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
except OSError as exc:
    print("netlink", errno.errorcode[exc.errno])
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError as exc:
    print("wx", errno.errorcode[exc.errno], flush=True)
os.setpriority(os.PRIO_PROCESS, 0, 1)
print("setpriority allowed")
"""


def sandbox_command(*target: str) -> list[str]:
    """Return argv running ``target`` under the emulated sandbox."""
    return [sys.executable, "-c", "from tests.integration.test_systemd_unit import exec_sandboxed; exec_sandboxed()", *target]


@pytest.fixture(scope="module")
def sandbox_env() -> dict[str, str]:
    """Give the unit's filters as environment for exec_sandboxed, checked to bite first (negative control)."""
    families = " ".join(str(FAMILIES[f]) for f in SERVICE["RestrictAddressFamilies"][0].split())
    env = {"PYTHONPATH": str(ROOT), "SANDBOX_FAMILIES": families, "SANDBOX_SYSCALLS": json.dumps(allowed_syscalls(SERVICE["SystemCallFilter"]))}
    probe = subprocess.run(sandbox_command(sys.executable, "-c", PROBE), env=cli_env(env), capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    if probe.returncode == 77:  # exec_sandboxed's "no seccomp here"
        pytest.skip("seccomp filters cannot be loaded here")
    assert probe.stdout.split("\n")[:2] == ["netlink EAFNOSUPPORT", "wx EPERM"], probe.stdout + probe.stderr
    assert probe.returncode == -signal.SIGSYS, "a syscall outside the filter (setpriority, in @resources) kills the process"
    return env


@needs_seccomp
async def test_relay_works_inside_the_units_sandbox(sandbox_env, standin, receiver, tmp_path, notify_socket):
    """Under the unit's syscall filter, W^X and address-family limits the relay starts, serves /metrics, resolves a name, delivers and exits 0."""
    sock, path = notify_socket
    sock.setblocking(False)  # noqa: FBT003 - socket API
    action = standin.add_action("CUSTOMERS.IMPORT_CSV")
    env = relay_env(tmp_path, standin, receiver, poll_interval="0.2", idle_poll_interval="0.2", http_listen="off")
    env["RELAY_VOUCHERIFY_API_URL"] = standin.base_url.replace("127.0.0.1", "localhost")  # getaddrinfo without AF_NETLINK
    env |= sandbox_env | {"NOTIFY_SOCKET": path}
    log = (tmp_path / "relay.log").open("wb")
    serve = "from tests.integration.test_systemd_unit import serve_relay; serve_relay()"
    proc = await asyncio.create_subprocess_exec(*sandbox_command(sys.executable, "-c", serve), env=cli_env(env), cwd=tmp_path, stdout=log, stderr=log)
    try:
        ready = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 15)
        assert ready.startswith(b"READY=1\nSTATUS=port "), ready
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ready.split()[-1].decode()}/metrics") as response:
            assert response.status == 200
        await until(lambda: standin.count("list") >= 1)
        standin.complete_action(action, example="SKUS.IMPORT_CSV")
        await until(lambda: len(receiver.delivered) == 1)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 25)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    output = (tmp_path / "relay.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "relay.stopped" in output
    assert "Traceback" not in output
