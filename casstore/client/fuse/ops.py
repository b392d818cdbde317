"""The thin FUSE adapter: mfusepy Operations over :class:`casstore.client.fuse.fs.ReleaseFS`
(itself a thin face of :class:`casstore.view.vfs.VFS`).

This is the one place where errors become errno values: a :class:`CasError`
becomes ``exc.errno`` (missing/corrupt objects -> EIO, with one log line naming
the object and a counter; a repeat failure of a known-bad object is counted
under ``known_bad`` too and logged at DEBUG only), anything unexpected is logged
at ERROR, counted and becomes EIO, so one bad request never takes the daemon
down.  Every mutating call answers EROFS (the mount is also ``ro``, so the
kernel usually answers first).  ``open`` answers ENOSYS so that, on libfuse3,
the kernel switches to "no_open" and stops sending open/release round trips;
except on a following mount (``follow=True``), where each open gets a handle
that keeps its revision to the end (:meth:`casstore.client.fuse.fs.ReleaseFS.open`).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import mfusepy

from casstore.client.fuse.fs import XATTR_PREFIX, Opened, ReleaseFS
from casstore.errors import CasError, NotFound, ObjectCorrupt, ObjectMissing
from casstore.sources.knownbad import KnownBadCorrupt, KnownBadMissing

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
DETACHED_PREFIX = "/.cas-detached-"  # where a following mount moves replaced open files


def boundary(fn: F) -> F:
    """Map typed errors to errno in ONE place; count what is not a plain ENOENT."""

    @functools.wraps(fn)
    def wrapper(self: CasOps, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except mfusepy.FuseOSError:
            raise
        except NotFound:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except CasError as exc:
            kind = ("missing" if isinstance(exc, ObjectMissing)
                    else "corrupt" if isinstance(exc, ObjectCorrupt) else "other")
            self.errors[kind] += 1
            self.errors["eio" if exc.errno == errno.EIO else "errno"] += 1
            if isinstance(exc, KnownBadCorrupt | KnownBadMissing):
                # Already logged (naming the object) when it first failed.
                self.errors["known_bad"] += 1
                log.debug("%s %s: %s", fn.__name__, args[0] if args else "", exc)
            else:
                log.error("%s %s: %s", fn.__name__, args[0] if args else "", exc)
            self.on_error()
            raise mfusepy.FuseOSError(exc.errno) from None
        except Exception:  # noqa: BLE001 - the boundary: never crash the daemon
            self.errors["internal"] += 1
            self.errors["eio"] += 1
            log.exception("unexpected error in %s %s", fn.__name__, args[:1])
            self.on_error()
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _erofs(*_args: Any, **_kw: Any) -> Any:
    raise mfusepy.FuseOSError(errno.EROFS)


class CasOps(mfusepy.Operations):
    """FUSE callbacks; each is a line or two over ReleaseFS."""

    use_ns = True

    def __init__(self, fs: ReleaseFS, on_init: Callable[[], None] | None = None,
                 follow: bool = False) -> None:
        self.fs = fs
        self.follow = follow
        self.detach_tid = 0  # the daemon thread allowed to rename (mount.Detacher)
        self.errors: Counter[str] = Counter()
        self._on_init = on_init
        self.initialised = False
        self.on_error: Callable[[], None] = lambda: None

    def init(self, path: str) -> None:
        self.initialised = True
        if self._on_init is not None:
            self._on_init()

    @boundary
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self.fs.getattr(path, fh)

    @boundary
    def stat_bytes(self, path: str, fh: int | None = None) -> bytes:
        """getattr as a packed struct stat (the fast path of fastpath.FastFUSE)."""
        return self.fs.stat_bytes(path, fh)

    @boundary
    def readdir(self, path: str, fh: int) -> list[str]:
        return self.fs.readdir(path)

    @boundary
    def readdir_raw(self, path: str, start: int = 0) -> Iterator[bytes]:
        """readdir as raw name bytes from item ``start`` (fastpath.FastFUSE)."""
        return self.fs.readdir_raw(path, start)

    @boundary
    def readlink(self, path: str) -> str:
        return self.fs.readlink(path)

    def open(self, path: str, flags: int) -> int:
        """mfusepy's own open (used when the fast path is off): the handle only."""
        return self.open_file(path, flags).fh

    @boundary
    def open_file(self, path: str, flags: int = os.O_RDONLY) -> Opened:
        """ENOSYS ("no_open") unless following; then a handle keeping its revision.
        (A following mount is not mounted ``ro``, so writes are refused here.)"""
        if not self.follow:
            raise mfusepy.FuseOSError(errno.ENOSYS)
        if flags & (os.O_ACCMODE | os.O_TRUNC) != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EROFS)
        return self.fs.open(path)

    @boundary
    def rename(self, old: str, new: str) -> int:
        """EROFS, except the daemon's own detach of a changed open file (following):
        libfuse then gives ``old`` a fresh inode at its next lookup."""
        if (not self.follow or not self.detach_tid or not new.startswith(DETACHED_PREFIX)
                or mfusepy.fuse_get_context()[2] != self.detach_tid):
            raise mfusepy.FuseOSError(errno.EROFS)
        self.fs.moved(old, new)
        return 0

    def release(self, path: str, fh: int) -> int:
        self.fs.release(fh)
        return 0

    @boundary
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.fs.read(path, size, offset, fh)

    @boundary
    def statfs(self, path: str) -> dict[str, int]:
        return self.fs.statfs()

    @boundary
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            raise mfusepy.FuseOSError(ENOATTR)
        if name == XATTR_PREFIX + "nioerr":
            return str(self.errors["eio"]).encode()
        value = self.fs.xattrs(path, with_id=name == XATTR_PREFIX + "id").get(name)
        if value is None:
            raise mfusepy.FuseOSError(ENOATTR)
        return value

    @boundary
    def listxattr(self, path: str) -> list[str]:
        names = list(self.fs.xattrs(path, with_id=False))
        return [*names, XATTR_PREFIX + "nioerr"] if path == "/" else names

    # Everything that would change the tree: EROFS.
    write = create = mkdir = mknod = unlink = rmdir = symlink = link = _erofs
    chmod = chown = truncate = utimens = setxattr = removexattr = fallocate = _erofs
