"""The FUSE-shaped face of :class:`casstore.view.vfs.VFS`: str paths, stat dicts, packed stats.

Everything here is a line or two over the VFS, and works without FUSE (the tests
call it directly); ``ops.py`` maps its typed errors onto errno.  Paths are
FUSE's ``str`` paths (decoded with surrogateescape); the VFS turns them back
into raw bytes, so any byte name survives.  Because the kernel may stop sending
open/release ("no_open"), reads arrive with a path only: the VFS's path cache
makes that a dict lookup.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from casstore.client.fuse.fastpath import STAT, pack_stat
from casstore.errors import CasError, NotFound
from casstore.format.trees import Kind
from casstore.view.filecache import FileCache
from casstore.view.vfs import VFS, XATTR_PREFIX, Node, ViewInfo

MountInfo = ViewInfo  # what is mounted: shown in xattrs and the status file
NAME_MAX = 255
__all__ = ["STAT", "XATTR_PREFIX", "MountInfo", "ReleaseFS"]


MAX_CACHED_KEYS = 500_000  # paths whose page-cache content is remembered (~60 MB)


@dataclass(frozen=True, slots=True)
class Handle:
    """An open file: the view and node it was opened in, kept to its close."""

    vfs: VFS
    node: Node
    path: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """What ``open`` tells the kernel: the handle, and how to treat its page cache."""

    fh: int
    keep_cache: bool
    direct_io: bool


class ReleaseFS:
    """FUSE-shaped calls over a :class:`VFS`; raises typed CasErrors.

    ``vfs`` may be replaced by :meth:`switch` while calls run (revision
    following): each call reads it once, so it sees one view.  Open files keep
    the view they were opened in (:class:`Handle`).
    """

    def __init__(self, vfs: VFS, uid: int = 0, gid: int = 0) -> None:
        self.vfs = vfs
        self.uid, self.gid = uid, gid
        self._handles: dict[int, Handle] = {}
        self._next_fh = itertools.count(1)
        # Page-cache model: per path, the node key whose bytes the kernel's page cache
        # may hold, and the keys of open handles.  See :meth:`open`.
        self._cached: dict[str, int] = {}  # path -> hash of the node key
        self._cached_complete = True  # False once _cached was cleared (bounded)
        self._open_keys: dict[str, dict[bytes, list[int]]] = {}  # key -> [count, size]
        self._moved: dict[str, Handle] = {}  # a detached path -> one of its handles
        self._lock = threading.Lock()

    def switch(self, vfs: VFS, detach: Callable[[list[str]], None] | None = None) -> list[str]:
        """Serve ``vfs`` from now on; the paths whose node changed (for the kernel to
        forget) are returned.  Handles already open keep their own view.

        ``detach`` (the FUSE adapter's) is called first, while the old view is still
        served, with the open paths whose content changes: it moves their kernel
        inodes out of the way, so the new content gets a fresh inode and page cache.
        """
        old = self.vfs
        changed = old.changed_paths(vfs)
        if detach is not None:
            stale = self.stale_open_paths(vfs)
            if stale:
                detach(stale)
        self.vfs = vfs  # one assignment: atomic for every reader
        return [p for p in changed if isinstance(p, str)]

    def stale_open_paths(self, vfs: VFS) -> list[str]:
        """Open paths with a handle whose content differs from (or is gone in) ``vfs``."""
        out = []
        with self._lock:
            opened = {p: set(keys) for p, keys in self._open_keys.items()
                      if p not in self._moved}  # (already detached)
        for path, keys in opened.items():
            try:
                key = vfs.node_key(vfs.lookup(path))
            except CasError:
                key = None
            if any(k != key for k in keys):
                out.append(path)
        return out

    def moved(self, old: str, new: str) -> None:
        """The kernel moved ``old``'s inode (and its open handles) to name ``new``
        (a detach): its handles now count there, and ``old`` starts afresh."""
        with self._lock:
            keys = self._open_keys.pop(old, None)
            if keys is not None:
                self._open_keys[new] = keys
            for fh, h in list(self._handles.items()):
                if h.path == old:
                    self._handles[fh] = self._moved[new] = Handle(h.vfs, h.node, new, h.key)
            self._cached.pop(old, None)

    # -- open files --------------------------------------------------------------
    def open(self, path: str) -> Opened:
        """A handle on the current node at ``path``, and the page-cache policy.

        The kernel keeps one page cache per path (libfuse's high-level API names
        inodes by path), shared by every handle of that path.  So:
        - another handle of the same path with *different* content is open (the
          path changed in a switch): this one bypasses the page cache
          (``direct_io``), so neither sees the other's bytes;
        - the page cache may hold different content (a switch happened since it
          was filled): drop it at this open (``keep_cache`` false);
        - else keep it (the fast, common case).

        A detached path (a switch moved an open file's inode there) is opened in
        its handles' view: ``/proc/PID/fd/N`` of such a file reopens it by that name.
        """
        moved = self._moved.get(path)
        vfs = moved.vfs if moved is not None else self.vfs
        node = moved.node if moved is not None else vfs.lookup(path)
        if node.entry.kind != Kind.FILE:
            raise NotFound(f"{path} is not a regular file")
        key = vfs.node_key(node)
        with self._lock:
            keys = self._open_keys.setdefault(path, {})
            direct = any(k != key for k in keys)
            keep = True
            if not direct:
                cached = self._cached.get(path)
                keep = cached == hash(key) or (cached is None and self._cached_complete)
                if len(self._cached) >= MAX_CACHED_KEYS:
                    self._cached, self._cached_complete = {}, False
                self._cached[path] = hash(key)
            keys.setdefault(key, [0, node.entry.size])[0] += 1
            fh = next(self._next_fh)
            self._handles[fh] = Handle(vfs, node, path, key)
        return Opened(fh, keep, direct)

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            keys = self._open_keys.get(h.path, {})
            slot = keys.get(h.key)
            if slot is not None:
                slot[0] -= 1
                if slot[0] <= 0:
                    del keys[h.key]
            if not keys:
                self._open_keys.pop(h.path, None)
                self._moved.pop(h.path, None)

    def handle(self, fh: int | None) -> Handle | None:
        return self._handles.get(fh) if fh else None

    def open_handles(self) -> int:
        return len(self._handles)

    @property
    def cache(self) -> FileCache | None:
        return self.vfs.cache

    @property
    def info(self) -> ViewInfo:
        return self.vfs.info

    def node(self, path: str) -> Node:
        return self.vfs.lookup(path)

    def _view(self, path: str, fh: int | None) -> tuple[VFS, Node]:
        """The view and node of an open handle, else of the path in the current view."""
        h = self._handles.get(fh) if fh else self._moved.get(path)
        if h is not None:  # (a detached path has only its handles' view)
            return h.vfs, h.node
        vfs = self.vfs
        return vfs, vfs.lookup(path)

    def _size(self, path: str, fh: int | None, size: int) -> int:
        """The size to report for ``path``: its own, except while handles of other
        content are open at the path (a switch changed it): then the largest.

        The kernel keeps one inode, so one i_size, per path; an old handle reading
        through the page cache would see EOF at a shorter new size.  New opens
        bypass the page cache in that state (:meth:`open`), so they still read
        exactly the new bytes; only ``st_size`` is larger until the old handles
        close (docs/CLIENT.md, "Following")."""
        keys = self._open_keys.get(path) if fh is None else None
        if not keys:
            return size
        return max(size, *(slot[1] for slot in keys.values()))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        vfs, node = self._view(path, fh)
        s = vfs.stat(node)
        size = self._size(path, fh, s.size)
        return {"st_mode": s.mode, "st_nlink": s.nlink, "st_size": size,
                "st_ino": vfs.inode(path, node),
                "st_uid": self.uid, "st_gid": self.gid, "st_blocks": (size + 511) // 512,
                "st_mtime": s.mtime_ns, "st_atime": s.mtime_ns, "st_ctime": s.mtime_ns}

    def stat_bytes(self, path: str, fh: int | None = None) -> bytes:
        """:meth:`getattr` packed as a Linux x86-64 ``struct stat`` (see fastpath)."""
        vfs, node = self._view(path, fh)
        s = vfs.stat(node)
        return pack_stat(s.mode, s.nlink, self._size(path, fh, s.size), s.mtime_ns, self.uid,
                         self.gid, vfs.inode(path, node))

    def readdir(self, path: str) -> list[str]:
        return [os.fsdecode(n) for n in self.readdir_raw(path)]

    def readdir_raw(self, path: str, start: int = 0) -> Iterator[bytes]:
        """``.``, ``..`` and the names as bytes (what libfuse's filler takes), from
        item ``start`` on (a readdir offset: items already returned).

        Lookup and decoding happen now (so errors surface here); the names are
        produced while libfuse consumes them, never held as one big list."""
        vfs = self.vfs
        node = vfs.lookup(path)
        if node.entry.kind != Kind.DIR:
            raise NotFound(f"{path} is not a directory")
        dots = (b".", b"..")[start:]
        return itertools.chain(dots, vfs.iter_names(node, max(0, start - 2)))

    def readlink(self, path: str) -> str:
        vfs = self.vfs
        return os.fsdecode(vfs.readlink(vfs.lookup(path)))

    def read(self, path: str, size: int, offset: int, fh: int | None = None) -> bytes:
        """From the handle's own view when there is one (it keeps its revision)."""
        vfs, node = self._view(path, fh)
        return vfs.read(node, offset, size)

    def xattrs(self, path: str, with_id: bool = True) -> dict[str, bytes]:
        vfs = self.vfs
        return vfs.xattrs(vfs.lookup(path), with_id)

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": self.vfs.cached_paths(), "f_ffree": 0,
                "f_namemax": NAME_MAX}
