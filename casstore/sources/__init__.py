"""Object sources: one interface (``base``), one module per implementation, and wrappers.

``open_source(spec)`` is the one factory that turns a config string into a source.
"""

from __future__ import annotations

from pathlib import Path

from casstore.sources.base import ObjectSource, fetch, verified
from casstore.sources.local import LocalSource

__all__ = ["LocalSource", "ObjectSource", "fetch", "open_source", "verified"]


def open_source(spec: str | Path) -> ObjectSource:
    """A source from a config value: for now a store folder path."""
    return LocalSource(Path(spec).resolve())
