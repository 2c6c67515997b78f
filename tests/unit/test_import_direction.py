"""Imports point one way: the pure core reaches no I/O library, sinks and settings stay off the client and the server."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "daemon"
PURE = [
    "model",
    "detect",
    "normalize",
    "cadence",
    "progress",
    "arrivals",
    "monthly",
    "pacing",
    "eventsize",
    "slack_blocks",
    "readiness",
    "urls",
    "delivery_policy",
]
IO_LIBRARIES = {"aiohttp", "asyncio", "sqlite3", "structlog", "apscheduler", "socket"}


def module_path(name: str) -> Path:
    """Return the file of ``daemon.x.y`` (a module or a package's __init__)."""
    base = PACKAGE.joinpath(*name.split(".")[1:])
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Return the modules ``name`` imports at run time (imports under ``if TYPE_CHECKING`` do not count)."""
    tree = ast.parse(module_path(name).read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if module_path(f"{node.module}.{alias.name}").exists())
    return frozenset(found)


def reachable(name: str) -> set[str]:
    """Return every module ``name`` imports, following our own modules transitively."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in direct_imports(todo.pop()):
            if imported not in seen:
                seen.add(imported)
                if imported.startswith("daemon.") and module_path(imported).exists():
                    todo.append(imported)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_reaches_no_io_library(module):
    """A pure module, and everything of ours it imports, imports no aiohttp, asyncio, sqlite3, structlog, APScheduler or socket."""
    tops = {name.split(".")[0] for name in reachable(f"daemon.{module}")}
    assert not tops & IO_LIBRARIES


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("daemon.sinks.webhook", "daemon.voucherify"),
        ("daemon.sinks.slack", "daemon.voucherify"),
        ("daemon.settings", "daemon.health"),
        ("daemon.settings", "aiohttp"),
        ("daemon.readiness", "daemon.health"),
    ],
)
def test_adapters_do_not_import_their_neighbours(module, forbidden):
    """The sinks take USER_AGENT from daemon.constants, settings parse RELAY_HTTP_LISTEN without the HTTP server."""
    assert forbidden not in reachable(module)
