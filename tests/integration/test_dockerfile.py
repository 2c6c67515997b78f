"""The Dockerfile, checked without a Docker engine: its structure, its install steps and its HEALTHCHECK.

No engine runs here, so the image is never built. Instead the Dockerfile is parsed and its
promises asserted; the builder stage's COPY and install steps are replayed into a fresh
virtualenv; and the HEALTHCHECK command is run against a local server. The real build and run,
with buildah and podman, is ``bash scripts/image-test`` (minutes; docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from daemon import __version__

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
STATE_DIR = "/var/lib/voucherify-relay"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"


@dataclass
class Stage:
    """One FROM ... AS name block and its instructions."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Return the arguments of every instruction with this keyword, in order."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """Return (instructions before the first FROM, stages), continuation lines joined, comments dropped."""
    logical: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        logical.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for keyword, args in logical:
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base=base, name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        else:
            preamble.append((keyword, args))
    return preamble, stages


PREAMBLE, STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
BUILDER, RUNTIME = STAGES[0], STAGES[-1]


def env_of(stage: Stage) -> dict[str, str]:
    """Return the ENV values a stage sets."""
    values: dict[str, str] = {}
    for args in stage.args("ENV"):
        values.update(item.split("=", 1) for item in shlex.split(args))
    return values


def healthcheck_argv() -> list[str]:
    """Return the HEALTHCHECK's exec-form command."""
    [args] = RUNTIME.args("HEALTHCHECK")
    return json.loads(args[args.index("CMD ") + 4 :])


def test_base_image_is_a_build_argument_defaulting_to_slim_python():
    """ARG PYTHON_IMAGE comes first, defaults to a slim Python, and every stage builds FROM it."""
    assert PREAMBLE == [("ARG", "PYTHON_IMAGE=python:3.12-slim")]
    assert [s.base for s in STAGES] == ["${PYTHON_IMAGE}"] * len(STAGES)


def test_multi_stage_copies_only_the_virtualenv():
    """A builder stage installs into /opt/venv; the runtime stage copies that venv, at the same path, and installs nothing."""
    assert len(STAGES) >= 2
    assert BUILDER.args("RUN")[0] == "python -m venv /opt/venv"
    assert f"--from={BUILDER.name} /opt/venv /opt/venv" in RUNTIME.args("COPY")
    assert not [r for r in RUNTIME.args("RUN") if re.search(r"\b(pip|apt-get|apk)\b", r)]


def test_builder_installs_only_hashed_locked_dependencies():
    """Dependencies come from requirements/runtime.txt with --require-hashes; the project and its build backend add nothing unhashed."""
    installs = [r for r in BUILDER.args("RUN") if "pip install" in r or "pip wheel" in r]
    assert "/opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt" in installs
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command or "pip wheel" in command:
                assert "--require-hashes" in command or "--no-deps" in command, command
            if "--no-deps" in command and "-r " not in command:
                assert "--no-build-isolation" in command or command.strip().endswith(".whl"), command
    copies = BUILDER.args("COPY")
    assert copies.index("requirements/runtime.txt requirements/build.txt requirements/") < copies.index("daemon ./daemon"), (
        "locked dependencies are a layer below the sources"
    )


def test_package_index_is_a_builder_argument_only():
    """ARG PIP_INDEX_URL lets the build use another index; it is declared in the builder stage and never reaches the runtime image."""
    assert "PIP_INDEX_URL=https://pypi.org/simple" in BUILDER.args("ARG")
    assert not [args for _, args in RUNTIME.instructions if "PIP_INDEX_URL" in args]


def test_runs_as_a_fixed_non_root_uid_owning_the_state_volume():
    """The final USER is a numeric non-zero UID (no passwd lookup needed) that owns the state directory volume."""
    user = RUNTIME.args("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert any(f"chown {user} {STATE_DIR}" in r for r in RUNTIME.args("RUN"))
    assert json.loads(RUNTIME.args("VOLUME")[0]) == [STATE_DIR]


def test_signals_reach_the_relay():
    """ENTRYPOINT and CMD are exec form (the relay is PID 1 and gets SIGTERM) and STOPSIGNAL is SIGTERM."""
    assert json.loads(RUNTIME.args("ENTRYPOINT")[-1]) == ["voucherify-relay"]
    assert json.loads(RUNTIME.args("CMD")[-1]) == ["run"]
    assert RUNTIME.args("STOPSIGNAL") == ["SIGTERM"]


def test_environment_is_set_for_a_container():
    """Unbuffered output, JSON logs, the venv on PATH, state in the volume and the listener on every interface at the exposed port."""
    env = env_of(RUNTIME)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["RELAY_LOG_FORMAT"] == "json"
    assert env["RELAY_STATE_URL"] == f"sqlite:///{STATE_DIR}/relay.db"
    assert env["RELAY_HTTP_LISTEN"] == "0.0.0.0:9464"
    assert RUNTIME.args("EXPOSE") == ["9464"]


def test_healthcheck_probes_readiness_with_python_not_curl():
    """HEALTHCHECK is exec form, runs the image's own Python against /readyz, and needs no curl or wget."""
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert "/readyz" in argv[2]
    assert not re.search(r"\b(curl|wget)\b", " ".join(RUNTIME.args("HEALTHCHECK")) + " ".join(RUNTIME.args("RUN")))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` (the last matching pattern wins; ``!`` re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
        parts = Path(path).parts
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), glob) or fnmatch.fnmatch(parts[i], glob) for i in range(len(parts))):
            excluded = not negate
    return excluded


def test_dockerignore_sends_the_sources_and_nothing_else():
    """Every file the builder COPYs reaches the build context; the venv, git, tests and databases do not."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [src for args in BUILDER.args("COPY") for src in shlex.split(args)[:-1]]
    for source in sources:
        for file in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py"):
            assert not dockerignored(str(file.relative_to(ROOT)), patterns), file
    for unwanted in [".venv/bin/python", ".git/config", "tests/conftest.py", "voucherify-relay.db", "daemon/__pycache__/app.cpython-311.pyc"]:
        assert dockerignored(unwanted, patterns), unwanted


def locked_distributions() -> set[str]:
    """Return the distributions requirements/runtime.txt pins for this platform (what the image installs)."""
    names = set()
    for line in RUNTIME_LOCK.read_text(encoding="utf-8").splitlines():
        if line[:1].isalnum():
            requirement = Requirement(line.rstrip(" \\").replace(" ;", ";"))
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                names.add(canonicalize_name(requirement.name))
    return names


def link_distributions(names: set[str], target: Path) -> None:
    """Symlink the importable top-level files of these installed distributions into ``target``."""
    target.mkdir()
    for name in names:
        dist = importlib.metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in {"..", "__pycache__"}}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)


def test_install_steps_work_in_a_fresh_venv(tmp_path):
    """The builder's COPY set and install steps give a virtualenv whose voucherify-relay runs and whose modules all import.

    Proves: the copied files are enough to build the package (pyproject, README, daemon/ with its
    data file) with the locked build backend and no build isolation; the console script is
    installed; every daemon module imports with only the distributions requirements/runtime.txt
    pins on the path. It does not prove: that the index serves those files for the base image's
    Python, that the slim image has what they need at run time, or anything about layers, users
    or volumes: `bash scripts/image-test` does, in minutes. Offline: the wheel is built with this
    environment's setuptools (pinned as in requirements/build.txt) and the dependencies are
    symlinked from this environment (pinned as in runtime.txt), so it takes seconds.
    """
    context = tmp_path / "src"
    for args in BUILDER.args("COPY"):
        *sources, dest = shlex.split(args)
        for source in sources:
            where = context / dest / Path(source).name if dest.endswith("/") else context / dest
            where.parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy2
            copy(ROOT / source, where, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    [build] = [r for r in BUILDER.args("RUN") if "pip wheel" in r]
    assert build == "/opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)  # noqa: S603
    python = venv / "bin" / "python"
    quiet = ["--disable-pip-version-check", "--quiet"]
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), *quiet, "."]
    built = subprocess.run(wheel, cwd=context, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel_file] = (tmp_path / "dist").glob("*.whl")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", *quiet, str(wheel_file)]
    installed = subprocess.run(install, cwd=context, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert installed.returncode == 0, installed.stderr[-3000:]
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)  # noqa: S603
    link_distributions(locked_distributions(), tmp_path / "deps")
    (Path(purelib.stdout.strip()) / "declared-deps.pth").write_text(f"{tmp_path / 'deps'}\n", encoding="utf-8")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PYTHON"))}
    script = venv / "bin" / "voucherify-relay"
    version = subprocess.run([script, "--version"], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert version.stdout.strip() == f"voucherify-relay {__version__}", version.stderr
    check = (
        "import importlib, pkgutil, daemon, importlib.resources as r;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(daemon.__path__, 'daemon.') if not m.name.endswith('__main__')];"
        "assert r.files('daemon.demo').joinpath('voucherify_examples.json').is_file();"
        "print(daemon.__file__)"
    )
    imported = subprocess.run([python, "-c", check], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert imported.returncode == 0, (
        f"a module needs a dependency missing from the runtime lock (pyproject.toml, then scripts/lock):\n{imported.stderr[-2000:]}"
    )
    assert imported.stdout.strip().startswith(str(venv)), "the relay ran from the fresh venv, not from the source tree"


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
async def test_healthcheck_command_follows_readyz(status, healthy):
    """The HEALTHCHECK command exits 0 when /readyz answers 200 and non-zero when it answers 503."""

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if healthy else "unavailable"}, status=status)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        code = await run_healthcheck({"RELAY_HTTP_LISTEN": f"0.0.0.0:{port}"})
    finally:
        await runner.cleanup()
    assert (code == 0) is healthy


async def test_healthcheck_command_fails_when_nothing_listens(unused_tcp_port):
    """With no listener on the port, the HEALTHCHECK command exits non-zero."""
    assert await run_healthcheck({"RELAY_HTTP_LISTEN": f"0.0.0.0:{unused_tcp_port}"}) != 0


async def run_healthcheck(extra_env: dict[str, str]) -> int:
    """Run the HEALTHCHECK command with this interpreter as the image's python; return its exit status."""
    argv = healthcheck_argv()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | extra_env
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv[1:], env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)
