"""The VFS of a verified release at one CPU level: the one builder of such a view.

A mount (``casstore.client.fuse.wiring``), ``cas doctor``'s look for Julia and the
prefetch-list recorder of ``cas depot build`` (``casstore.julia.record``) all see
a release the same way: its root tree, the chosen level's overlay merged over it,
the release's creation time as the root's mtime, and :class:`ViewInfo` naming
release, revision, level and root.  Building it here keeps those views identical
(a list recorded over one view must name the paths a mount serves).
"""

from __future__ import annotations

from casstore.format.objects import ObjectId
from casstore.releases.release import Release
from casstore.sources.base import ObjectSource
from casstore.view.filecache import FileCache
from casstore.view.reader import TreeReader
from casstore.view.vfs import VFS, ViewInfo


def overlay_id(rel: Release, level: str | None) -> ObjectId | None:
    """The overlay tree of ``level`` (None: no level chosen, or none offered)."""
    return rel.variant_ids().get(level) if level else None


def release_vfs(rel: Release, level: str | None, source: ObjectSource | TreeReader,
                cache: FileCache | None = None) -> VFS:
    """The view of ``rel`` at ``level`` over ``source`` (a TreeReader is shared, so a
    new revision's view keeps the decoded trees of the old one), large files through
    ``cache`` when given."""
    info = ViewInfo(rel.name, rel.revision, level, rel.root)
    reader = source if isinstance(source, TreeReader) else TreeReader(source)
    return VFS(reader, rel.root_id, overlay_id(rel, level), info=info,
               mtime_ns=rel.created * 10**9, cache=cache)
