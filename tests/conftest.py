"""Pytest configuration shared by all test tiers."""

from __future__ import annotations

import sys
from pathlib import Path

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
