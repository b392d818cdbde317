"""The FUSE fast paths: pre-packed getattr, and readdir of raw names.

getattr: mfusepy fills the struct field by field through ctypes (about 4 us a
call); one memmove of bytes packed by ``struct`` costs a fraction of that, which
shows on a cold mount where every stat is a FUSE round trip.  Used only after
:func:`fast_getattr_ok` proved the layout equal to mfusepy's own.

readdir: mfusepy decodes every name to str, re-encodes it and fills a stat per
entry, and (offset 0) makes libfuse buffer the whole listing.  Here raw names go
straight to libfuse's filler with offsets (no stat: libfuse passes "unknown"),
so libfuse fills one kernel page at a time and asks again from the last offset:
a directory of a million entries is never held whole, in Python or in libfuse.
"""

from __future__ import annotations

import logging
import struct

log = logging.getLogger(__name__)

# struct stat on Linux x86-64: dev, ino, nlink, mode, uid, gid, pad, rdev, size,
# blksize, blocks, atim, mtim, ctim, 3 reserved longs.
STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")


def pack_stat(mode: int, nlink: int, size: int, mtime_ns: int, uid: int, gid: int,
              ino: int = 0) -> bytes:
    sec, nsec = divmod(mtime_ns, 1_000_000_000)
    return STAT.pack(0, ino, nlink, mode, uid, gid, 0, 0, size, 0, (size + 511) // 512,
                     sec, nsec, sec, nsec, sec, nsec)


def fast_getattr_ok() -> bool:
    """Does STAT produce exactly what mfusepy's own getattr path would write?"""
    import ctypes

    import mfusepy

    if ctypes.sizeof(mfusepy.c_stat) != STAT.size:
        return False
    attrs = {"st_mode": 0o100644, "st_ino": 1 << 62 | 12345, "st_nlink": 3,
             "st_size": 70_000, "st_uid": 5,
             "st_gid": 6, "st_blocks": 137, "st_mtime": 1_500_000_000_987_654_321,
             "st_atime": 1_500_000_000_987_654_321, "st_ctime": 1_500_000_000_987_654_321}
    ref = mfusepy.c_stat()
    mfusepy.set_st_attrs(ref, attrs, use_ns=True)
    return bytes(ref) == pack_stat(0o100644, 3, 70_000, 1_500_000_000_987_654_321, 5, 6,
                                   1 << 62 | 12345)


def fuse_class():
    """mfusepy.FUSE, with getattr writing a pre-packed struct stat when that is safe."""
    import ctypes

    import mfusepy

    if not fast_getattr_ok():
        log.info("struct stat layout differs from fastpath.STAT; using mfusepy getattr")
        return mfusepy.FUSE

    class FastFUSE(mfusepy.FUSE):
        def getattr_fuse_3(self, path, buf, fip):
            if path is None:
                return super().getattr_fuse_3(path, buf, fip)
            fh = fip.contents.fh if fip else None  # fstat of an open file: its revision
            packed = self.operations.stat_bytes(path.decode(self.encoding, self.errors), fh)
            ctypes.memmove(buf, packed, len(packed))
            return 0

        def open(self, path, fip):
            """Sets keep_cache/direct_io per open (revision following; fs.ReleaseFS.open)."""
            fi = fip.contents
            got = self.operations.open_file(path.decode(self.encoding, self.errors), fi.flags)
            fi.fh, fi.keep_cache, fi.direct_io = got.fh, got.keep_cache, got.direct_io
            return 0

        def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
            if path is None:
                return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
            names = self.operations.readdir_raw(path.decode(self.encoding, self.errors),
                                                offset)
            for pos, name in enumerate(names, offset + 1):  # offset of the NEXT item
                if filler(buf, name, None, pos, 0) != 0:
                    break
            return 0

    return FastFUSE
