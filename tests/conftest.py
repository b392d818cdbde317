"""Pytest configuration shared by all test tiers."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Some tests make 600- and 1500-level folders.  Python 3.11's shutil.rmtree and
# pathlib's rglob recurse once per level, so pytest's own clean-up of old temp
# folders (this run's or an earlier one's) would die with RecursionError, fail the
# session and leave gigabytes behind.  Pure-Python recursion costs no C stack on
# 3.11, so a higher limit is safe.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))

try:  # FUSE mount fixtures live in their own module.
    from fuse_fixtures import *  # noqa: F401,F403
except ImportError as exc:  # pragma: no cover - only while the module is absent
    if "fuse_fixtures" not in str(exc):
        raise

from other_uid import OtherUidPython, make_readable_casstore  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that runs Julia is slow: ``-m "not slow"`` (the fast tier) leaves out
    every ``julia`` test without each one having to carry both markers.  ``tryfirst``
    so the marker is there before ``-m`` deselects."""
    for item in items:
        if item.get_closest_marker("julia") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def other_uid_cas() -> Iterator[OtherUidPython]:
    """``python -m casstore`` as uid 65534 from a world-readable copy of the package and
    its dependencies, so such a test does not depend on where the checkout lies.
    Skips without root or setpriv, or (with the reason) if no interpreter works."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a command as another user")
    runner, why, base = make_readable_casstore()
    try:
        if runner is None:
            pytest.skip(why)
        yield runner
    finally:
        shutil.rmtree(base, ignore_errors=True)
