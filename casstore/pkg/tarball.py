"""Deterministic ``.tar.gz`` files made from store trees, as Pkg servers serve them.

Pkg 1.5 downloads ``/package``, ``/registry`` and ``/artifact`` content with curl and
unpacks it with ``tar -mxzf`` (so member mtimes do not matter to it), then checks
the git tree hash of what it unpacked.  The archive is written in one pass over
the tree, and the same pass computes the tree's git hash from the very bytes that
go into the archive, so what we check is what we ship.  Headers are normalised
(uid/gid 0, no user names, modes 0644/0755, gzip mtime 0) so one tree always gives
the same bytes.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from typing import BinaryIO

from casstore.format.objects import ObjectId
from casstore.format.trees import Entry, Kind
from casstore.pkg.gittree import store_tree_hash
from casstore.view.reader import TreeReader, root_entry

GZIP_LEVEL = 6


def write_tarball(reader: TreeReader, tree: ObjectId, out: BinaryIO) -> str:
    """Write the tree as a gzipped tar to ``out``; return its git tree SHA-1 (hex)."""
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0,
                       filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def visit(path: bytes, e: Entry, stream) -> None:
            info = tarfile.TarInfo(os.fsdecode(path))
            info.mtime = max(0, e.mtime_ns // 1_000_000_000)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.kind == Kind.DIR:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif e.kind == Kind.SYMLINK:
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = os.fsdecode(e.data)
                tar.addfile(info)
            else:
                info.type, info.size = tarfile.REGTYPE, e.size
                info.mode = 0o755 if e.mode & 0o100 else 0o644
                tar.addfile(info, stream)

        return store_tree_hash(reader, root_entry(tree), visit)
