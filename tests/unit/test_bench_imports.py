"""Every benchmark module imports: a rename in one module must not leave another bench broken until someone runs it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"))
def test_the_benchmark_module_imports(name):
    """bench/<name>.py imports with the dev dependencies (matplotlib, in the bench extra, is imported only when drawing)."""
    assert importlib.import_module(f"bench.{name}") is not None
