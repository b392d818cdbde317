"""The mounted release as plain Python: stat dicts, listings, bytes and magic xattrs.

Everything here works without FUSE (the tests call it directly); ``ops.py`` is the
thin adapter that maps these calls and their typed errors onto FUSE.  Paths are
FUSE's ``str`` paths (decoded with surrogateescape) and turned back into raw
bytes with ``os.fsencode``, so any byte name survives.

Because the kernel may stop sending open/release ("no_open"), reads arrive with a
path only; ``_nodes`` caches path -> Node so a read or stat never walks the tree
again.  It is bounded (cleared wholesale when full: rebuilding is cheap because
decoded trees are cached in the reader).
"""

from __future__ import annotations

import os
import stat as st
import struct
from dataclasses import dataclass

from casstore.cache import FileCache
from casstore.errors import NotFound
from casstore.objects import ObjectId
from casstore.trees import Kind, Storage
from casstore.variants import MergedView, Node

XATTR_PREFIX = "user.cas."
MAX_NODES = 500_000
# struct stat on Linux x86-64: dev, ino, nlink, mode, uid, gid, pad, rdev, size,
# blksize, blocks, atim, mtim, ctim, 3 reserved longs.  fuseclient.mount checks it
# against mfusepy's c_stat before using it, and falls back to getattr otherwise.
STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")


@dataclass(frozen=True)
class MountInfo:
    """What is mounted: shown in xattrs and the status file."""

    release: str
    revision: int
    level: str | None
    root: str


class ReleaseFS:
    """Filesystem operations over a :class:`MergedView`; raises typed CasErrors."""

    def __init__(self, view: MergedView, info: MountInfo, cache: FileCache | None = None,
                 uid: int = 0, gid: int = 0) -> None:
        self.view = view
        self.info = info
        self.cache = cache
        self.uid, self.gid = uid, gid
        self._nodes: dict[str, Node] = {"/": view.root}
        self._nlink: dict[str, int] = {}

    # -- lookup ------------------------------------------------------------------
    def node(self, path: str) -> Node:
        """The node at ``path``, via the path cache (parents are cached on the way)."""
        found = self._nodes.get(path)
        if found is not None:
            return found
        parent, _, name = path.rpartition("/")
        found = self.view.child(self.node(parent or "/"), os.fsencode(name))
        if len(self._nodes) >= MAX_NODES:
            self._nodes = {"/": self.view.root}
            self._nlink.clear()
        self._nodes[path] = found
        return found

    # -- metadata ----------------------------------------------------------------
    def _attrs(self, path: str) -> tuple[int, int, int, int]:
        """(mode, nlink, size, mtime_ns) of a path."""
        node = self.node(path)
        e = node.entry
        kind = e.kind
        if kind == Kind.FILE:
            return st.S_IFREG | e.mode, 1, e.size, e.mtime_ns
        if kind == Kind.DIR:
            return st.S_IFDIR | e.mode, self._dir_nlink(path, node), 4096, e.mtime_ns
        return st.S_IFLNK | 0o777, 1, e.size, e.mtime_ns

    def getattr(self, path: str) -> dict[str, int]:
        mode, nlink, size, mtime = self._attrs(path)
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size,
                "st_uid": self.uid, "st_gid": self.gid, "st_blocks": (size + 511) // 512,
                "st_mtime": mtime, "st_atime": mtime, "st_ctime": mtime}

    def stat_bytes(self, path: str) -> bytes:
        """:meth:`getattr` packed as a Linux x86-64 ``struct stat`` (see STAT)."""
        mode, nlink, size, mtime = self._attrs(path)
        sec, nsec = divmod(mtime, 1_000_000_000)
        return STAT.pack(0, 0, nlink, mode, self.uid, self.gid, 0, 0, size, 0,
                         (size + 511) // 512, sec, nsec, sec, nsec, sec, nsec)

    def _dir_nlink(self, path: str, node: Node) -> int:
        """2 + subdirectories, as on a local filesystem (find relies on it)."""
        n = self._nlink.get(path)
        if n is None:
            if node.overlay is None:  # plain tree: count entries, no Node objects
                kids = self.view.reader.listdir(node.entry)
                n = 2 + sum(1 for e in kids if e.kind == Kind.DIR)
            else:
                n = 2 + sum(1 for c in self.view.listdir(node) if c.entry.kind == Kind.DIR)
            self._nlink[path] = n
        return n

    def readdir(self, path: str) -> list[str]:
        node = self.node(path)
        if node.entry.kind != Kind.DIR:
            raise NotFound(f"{path} is not a directory")
        names = []
        prefix = path.rstrip("/") + "/"
        for child in self.view.listdir(node):
            name = os.fsdecode(child.entry.name)
            if len(self._nodes) < MAX_NODES:
                self._nodes.setdefault(prefix + name, child)
            names.append(name)
        return [".", "..", *names]

    def readlink(self, path: str) -> str:
        e = self.node(path).entry
        if e.kind != Kind.SYMLINK:
            raise NotFound(f"{path} is not a symlink")
        return os.fsdecode(e.data)

    # -- data --------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int) -> bytes:
        node = self.node(path)
        if self.cache is not None and self.cache.wants(node.entry):
            return self.cache.read(node.entry, offset, size)
        return self.view.read(node, offset, size)

    # -- magic xattrs ------------------------------------------------------------
    def xattrs(self, path: str, with_id: bool = True) -> dict[str, bytes]:
        """``user.cas.*`` for a path (CVMFS-style): ids, release, revision, variant.

        ``with_id=False`` gives ``user.cas.id`` as empty bytes: listing names must
        not read and hash a packed file just to compute a value nobody asked for.
        """
        node = self.node(path)
        out = {"id": self.object_id(node) if with_id else "", "release": self.info.release,
               "revision": str(self.info.revision)}
        if node.entry.kind == Kind.FILE:
            storage = node.entry.storage or Storage.INLINE
            out["storage"] = storage.name.lower()
        if node.variant:
            out["variant"] = self.info.level or ""
        if path == "/":
            out["level"] = self.info.level or "none"
            out["root"] = self.info.root
        return {XATTR_PREFIX + k: v.encode() for k, v in out.items()}

    def object_id(self, node: Node) -> str:
        """The object id of a file or dir; for inline and packed files, the id its
        bytes would have.

        An inline or packed file has no object of its own (its bytes sit in the parent
        tree or in a pack shared with its siblings), so its id is BLAKE3 of its
        content: exactly the chunk id it would get if it were stored as one chunk.
        ``user.cas.storage`` says which case applies.
        """
        e = node.entry
        if e.storage == Storage.PACKED:
            return str(ObjectId.of(self.view.read(node, 0, e.size)))
        if e.oid is not None:
            return str(e.oid)
        return str(ObjectId.of(e.data))  # inline file (or symlink target)

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": len(self._nodes), "f_ffree": 0, "f_namemax": 4096}
