"""Wiring: compose the object source and build the filesystem for a selection.

The one place that decides the layering (outermost first)::

    ReleaseFS (FUSE shape) -> VFS (paths, overlay) -> TreeReader (decoded objects)
                                                  \\-> FileCache (large files)
    both over: KnownBad( [ObjectCache( ] source [ ) ] )

An on-disk object cache for remote sources slots in between KnownBad and the
source here, with no change in any layer above.
"""

from __future__ import annotations

from dataclasses import dataclass

from casstore.cache import FileCache
from casstore.config import ClientConfig
from casstore.reader import TreeReader
from casstore.selection import Selection
from casstore.sources.base import ObjectSource
from casstore.sources.knownbad import KnownBad
from casstore.vfs import VFS, ViewInfo
from fuseclient.fs import ReleaseFS


@dataclass
class Built:
    """The fs and the pieces the status file reports on."""

    fs: ReleaseFS
    bad: KnownBad
    cache: FileCache


def compose_source(inner: ObjectSource) -> KnownBad:
    """The object source a node reads through: known-bad memory outermost."""
    return KnownBad(inner)


def build_vfs(sel: Selection, source: ObjectSource, cache: FileCache | None = None) -> VFS:
    info = ViewInfo(sel.release.name, sel.release.revision, sel.level, sel.release.root)
    return VFS(TreeReader(source), sel.release.root_id, sel.overlay, info=info,
               mtime_ns=sel.mtime_ns, cache=cache)


def build_fs(sel: Selection, cfg: ClientConfig) -> Built:
    """The filesystem model for a selection (no FUSE involved)."""
    source = compose_source(sel.source)
    cache = FileCache(source, cfg.cache_dir, cfg.cache_size, cfg.prefetch_min)
    return Built(ReleaseFS(build_vfs(sel, source, cache)), source, cache)
