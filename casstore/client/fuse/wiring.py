"""Wiring: compose the object source and build the filesystem for a selection.

The one place that decides the layering (outermost first)::

    ReleaseFS (FUSE shape) -> VFS (paths, overlay) -> TreeReader (decoded objects)
                                                  \\-> FileCache (large files)
    both over: KnownBad( [ObjectCache( ] source [ ) ] )

An on-disk object cache for remote sources slots in between KnownBad and the
source here, with no change in any layer above.  Two optional pieces hang off
the fs: the prefetch-list :class:`~casstore.client.replay.Replay` (started once the
mount exists) and the access recorder (``--record-access``, for ``cas depot build``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from casstore.client.config import ClientConfig
from casstore.client.fuse.fs import ReleaseFS
from casstore.client.fuse.recording import RecordingFS
from casstore.client.metrics import ClientMetrics
from casstore.client.replay import Replay
from casstore.client.selection import Selection
from casstore.errors import CasError
from casstore.format.objects import ObjectId
from casstore.format.trees import Kind
from casstore.releases.prefetch import AccessRecorder, load_list
from casstore.sources.base import ObjectSource
from casstore.sources.knownbad import KnownBad
from casstore.view.filecache import FileCache
from casstore.view.reader import TreeReader
from casstore.view.release_view import release_vfs
from casstore.view.vfs import VFS


@dataclass
class Built:
    """The fs and the pieces the status file reports on."""

    fs: ReleaseFS
    bad: KnownBad
    cache: FileCache
    replay: Replay | None = None
    recorder: AccessRecorder | None = None
    metrics: ClientMetrics | None = None  # set by attach_metrics (the mount daemon)


def compose_source(inner: ObjectSource) -> KnownBad:
    """The object source a node reads through: known-bad memory outermost."""
    return KnownBad(inner)


def build_vfs(sel: Selection, source: ObjectSource | TreeReader,
              cache: FileCache | None = None) -> VFS:
    """The view of the selected release at the selected level."""
    return release_vfs(sel.release, sel.level, source, cache)


def switch_fs(built: Built, sel: Selection,
              detach: Callable[[list[str]], None] | None = None) -> list[str]:
    """Serve verified selection ``sel`` from now on (revision following).

    The new view shares the old one's TreeReader and FileCache (unchanged
    subtrees stay decoded and cached); open handles keep the old view.  Returns
    the paths whose node changed, for the kernel to forget.

    The new root tree (and the variant's overlay root) is fetched and verified
    first: if that fails (corrupt or missing at the source) the CasError is raised
    and the old revision stays served, instead of a view where every path is EIO.
    Those objects are not remembered as bad, so the next check fetches them again."""
    old = built.fs.vfs
    new = build_vfs(sel, old.reader, old.cache)
    try:
        new.names(new.lookup("/"))  # decodes the root tree and the overlay's
    except CasError:
        overlay = sel.release.variant_ids().get(sel.level) if sel.level else None
        built.bad.forget([sel.release.root_id, *([overlay] if overlay else [])])
        raise
    return built.fs.switch(new, detach)


def warmer(vfs: VFS):
    """``warm(path, oids)`` for :class:`Replay`: start the FileCache's whole-file copy
    of a listed file that was read (its own id is among ``oids``) and is large,
    without waiting for it; the ids the copy fetches itself."""

    def warm(path: str, oids: set[ObjectId]) -> set[ObjectId]:
        cache = vfs.cache
        if cache is None:
            return set()
        e = vfs.lookup("/" + path).entry
        if e.kind != Kind.FILE or e.oid not in oids or not cache.wants(e):
            return set()
        layout = vfs.reader.layout(e)
        if not cache.start(e.oid, lambda: layout):
            return set()
        return {e.oid, *layout.oids}

    return warm


def make_replay(sel: Selection, source: ObjectSource, vfs: VFS) -> Replay:
    """The replay of the selected level's prefetch list: batches go to the composed
    source's ``prefetch`` when it has one (an ObjectCache over HTTP), the list itself
    is read through the known-bad wrapper like any other object."""
    return Replay(lambda: load_list(source, sel.release, sel.level), sel.source,
                  warmer(vfs))


def build_fs(sel: Selection, cfg: ClientConfig, record: bool = False,
             prefetch: bool = True) -> Built:
    """The filesystem model for a selection (no FUSE involved)."""
    source = compose_source(sel.source)
    cache = FileCache(source, cfg.cache_dir, cfg.cache_size, cfg.prefetch_min)
    vfs = build_vfs(sel, source, cache)
    fs, recorder = ReleaseFS(vfs), None
    if record:
        recorder = AccessRecorder()
        fs = RecordingFS(fs, recorder)
    replay = make_replay(sel, source, vfs) if prefetch else None
    return Built(fs, source, cache, replay, recorder)


def attach_metrics(built: Built, sel: Selection, mountpoint: str,
                   fuse_errors: Callable[[], Mapping[str, int]]) -> ClientMetrics:
    """The mount's :class:`ClientMetrics` over the built pieces (kept as
    ``built.metrics``): source counters and object cache through the composed
    source, the file cache, the FUSE error counts and the prefetch progress.
    The last successful check is the verification that selected the release."""
    m = ClientMetrics(mountpoint, sel.release.name, sel.release.revision, source=built.bad)
    m.attach(file_cache=built.cache.summary, fuse_errors=fuse_errors,
             prefetch=built.replay.summary if built.replay is not None else None)
    built.metrics = m
    return m
