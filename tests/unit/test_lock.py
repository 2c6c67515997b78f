"""The hashed lock files agree with pyproject.toml (offline: no resolver, no index).

`bash scripts/lock` writes requirements/{runtime,build,dev}.txt; scripts/bootstrap.sh and the
Dockerfile install them with --require-hashes. These tests fail when a dependency is added to
pyproject.toml, or its range changed, without running scripts/lock.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?: *; *(?P<marker>[^\\]+?))? *\\?$")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def parse_lock(text: str) -> dict[str, tuple[Version, int]]:
    """Return {canonical name: (pinned version, number of hashes)} of a hashed requirements file; raise on a line it cannot read."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif match := PIN.match(line):
            current = canonicalize_name(match["name"])
            pins[current] = (Version(match["version"]), 0)
        else:
            msg = f"not a pinned requirement or a hash: {line!r}"
            raise ValueError(msg)
    return pins


def lock(name: str) -> dict[str, tuple[Version, int]]:
    """Return the pins of requirements/<name>.txt."""
    return parse_lock((REQUIREMENTS / f"{name}.txt").read_text(encoding="utf-8"))


def unlocked(requirements: list[str], pins: dict[str, tuple[Version, int]]) -> list[str]:
    """Return the requirements (and their extras' packages) the pins miss or pin outside the allowed range."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in pins or not requirement.specifier.contains(pins[name][0], prereleases=True):
            missing.append(text)
        missing.extend(f"{text} needs {extra_pkg}" for extra_pkg in extra_packages(requirement) if extra_pkg not in pins)
    return missing


def extra_packages(requirement: Requirement) -> list[str]:
    """Return the packages a requirement's extras add (psycopg[binary] -> psycopg-binary), read from the installed distribution's metadata."""
    try:
        declared = importlib.metadata.distribution(requirement.name).requires or []
    except importlib.metadata.PackageNotFoundError:
        return []  # not installed here: the name check above still holds
    wanted = []
    for text in declared:
        dependency = Requirement(text)
        added = dependency.marker and not dependency.marker.evaluate({"extra": ""})
        if added and any(dependency.marker.evaluate({"extra": extra}) for extra in requirement.extras):
            wanted.append(canonicalize_name(dependency.name))
    return sorted(set(wanted))


def test_runtime_lock_pins_every_dependency_within_its_range():
    """requirements/runtime.txt pins each of pyproject's dependencies at a version its range allows."""
    assert unlocked(PYPROJECT["project"]["dependencies"], lock("runtime")) == []


def test_dev_lock_pins_dependencies_extras_and_the_build_backend():
    """requirements/dev.txt pins the dependencies, the test and lint extras and the build backend that bootstrap uses without isolation."""
    groups = PYPROJECT["project"]["optional-dependencies"]
    extras = [req for name in ("test", "dev") for req in groups[name]]  # the bench extra (matplotlib) is not for the suite
    wanted = PYPROJECT["project"]["dependencies"] + extras + PYPROJECT["build-system"]["requires"]
    assert unlocked(wanted, lock("dev")) == []


def test_build_lock_pins_the_build_backend():
    """requirements/build.txt pins pyproject's [build-system] requires, which the image builds with."""
    assert unlocked(PYPROJECT["build-system"]["requires"], lock("build")) == []


def test_dev_lock_pins_shared_packages_as_runtime_does():
    """Every package of the runtime and build locks is pinned at the same version in the dev lock, so tests run what the image ships."""
    dev = lock("dev")
    shared = lock("runtime") | lock("build")
    assert {name: version for name, (version, _) in shared.items() if dev.get(name, (None,))[0] != version} == {}


@pytest.mark.parametrize("name", ["runtime", "build", "dev"])
def test_every_pin_carries_hashes(name):
    """Each pinned package has at least one sha256 hash, so pip's --require-hashes accepts the file."""
    pins = lock(name)
    assert pins
    assert [pkg for pkg, (_, hashes) in pins.items() if hashes == 0] == []


def test_a_dependency_missing_from_the_lock_is_reported():
    """A requirement the lock does not pin, or pins outside its range, or whose extra's package is absent, is named."""
    pins = parse_lock("aiohttp==3.9.0 \\\n    --hash=sha256:00\npsycopg==3.2.1 \\\n    --hash=sha256:11\n")
    assert unlocked(["aiohttp>=3.9,<4", "tenacity>=8.2", "psycopg[binary]>=3.2"], pins) == ["tenacity>=8.2", "psycopg[binary]>=3.2 needs psycopg-binary"]
    assert unlocked(["aiohttp>=4"], pins) == ["aiohttp>=4"]


def test_an_unreadable_lock_line_is_an_error():
    """A loose (unpinned) line in a lock file fails loudly instead of being skipped."""
    with pytest.raises(ValueError, match="not a pinned requirement"):
        parse_lock("aiohttp>=3.9\n")
