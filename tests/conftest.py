"""Pytest configuration shared by all test tiers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:  # FUSE mount fixtures live in their own module.
    from fuse_fixtures import *  # noqa: F401,F403
except ImportError as exc:  # pragma: no cover - only while the module is absent
    if "fuse_fixtures" not in str(exc):
        raise
