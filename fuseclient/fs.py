"""The FUSE-shaped face of :class:`casstore.vfs.VFS`: str paths, stat dicts, packed stats.

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
from collections.abc import Iterator

from casstore.cache import FileCache
from casstore.errors import NotFound
from casstore.trees import Kind
from casstore.vfs import VFS, XATTR_PREFIX, Node, ViewInfo
from fuseclient.fastpath import STAT, pack_stat

MountInfo = ViewInfo  # what is mounted: shown in xattrs and the status file
NAME_MAX = 255
__all__ = ["STAT", "XATTR_PREFIX", "MountInfo", "ReleaseFS"]


class ReleaseFS:
    """FUSE-shaped calls over a :class:`VFS`; raises typed CasErrors."""

    def __init__(self, vfs: VFS, uid: int = 0, gid: int = 0) -> None:
        self.vfs = vfs
        self.uid, self.gid = uid, gid

    @property
    def cache(self) -> FileCache | None:
        return self.vfs.cache

    @property
    def info(self) -> ViewInfo:
        return self.vfs.info

    def node(self, path: str) -> Node:
        return self.vfs.lookup(path)

    def getattr(self, path: str) -> dict[str, int]:
        s = self.vfs.stat(self.vfs.lookup(path))
        return {"st_mode": s.mode, "st_nlink": s.nlink, "st_size": s.size,
                "st_uid": self.uid, "st_gid": self.gid, "st_blocks": (s.size + 511) // 512,
                "st_mtime": s.mtime_ns, "st_atime": s.mtime_ns, "st_ctime": s.mtime_ns}

    def stat_bytes(self, path: str) -> bytes:
        """:meth:`getattr` packed as a Linux x86-64 ``struct stat`` (see fastpath)."""
        s = self.vfs.stat(self.vfs.lookup(path))
        return pack_stat(s.mode, s.nlink, s.size, s.mtime_ns, self.uid, self.gid)

    def readdir(self, path: str) -> list[str]:
        return [os.fsdecode(n) for n in self.readdir_raw(path)]

    def readdir_raw(self, path: str, start: int = 0) -> Iterator[bytes]:
        """``.``, ``..`` and the names as bytes (what libfuse's filler takes), from
        item ``start`` on (a readdir offset: items already returned).

        Lookup and decoding happen now (so errors surface here); the names are
        produced while libfuse consumes them, never held as one big list."""
        node = self.vfs.lookup(path)
        if node.entry.kind != Kind.DIR:
            raise NotFound(f"{path} is not a directory")
        dots = (b".", b"..")[start:]
        return itertools.chain(dots, self.vfs.iter_names(node, max(0, start - 2)))

    def readlink(self, path: str) -> str:
        return os.fsdecode(self.vfs.readlink(self.vfs.lookup(path)))

    def read(self, path: str, size: int, offset: int) -> bytes:
        return self.vfs.read(self.vfs.lookup(path), offset, size)

    def xattrs(self, path: str, with_id: bool = True) -> dict[str, bytes]:
        return self.vfs.xattrs(self.vfs.lookup(path), with_id)

    def statfs(self) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": self.vfs.cached_paths(), "f_ffree": 0,
                "f_namemax": NAME_MAX}
