"""``cas get``: materialise a file or tree with exact bytes, modes, symlinks and mtimes.

Each file is written to a temporary name beside its destination and renamed only
once every chunk has verified, so a corrupt object can stop a restore but never
leave wrong bytes under a real name.  Chunks are fetched and verified on a small
thread pool (zstd and BLAKE3 release the GIL).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from casstore.errors import NotFound, StoreError
from casstore.objects import ObjectId, ObjType
from casstore.reader import TreeReader, packed_bytes
from casstore.sources.base import ObjectSource, fetch, stored_type
from casstore.trees import Entry, Kind, Storage

Progress = Callable[[int], None]
_WINDOW = 8


class Restorer:
    """Writes entries below a destination, verifying every chunk first."""

    def __init__(self, source: ObjectSource, progress: Progress | None = None) -> None:
        self.source = source
        self.reader = TreeReader(source, chunk_cache_bytes=0)
        self.progress = progress or (lambda n: None)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        self._last_pack: tuple[ObjectId | None, bytes] = (None, b"")

    def close(self) -> None:
        self.pool.shutdown()

    def _chunks(self, oids: list[ObjectId]) -> Iterator[bytes]:
        """Verified chunks in order, fetched ahead on the pool."""
        futs = [self.pool.submit(fetch, self.source, o, ObjType.CHUNK) for o in oids[:_WINDOW]]
        for i in range(len(oids)):
            data = futs[i].result()
            if i + _WINDOW < len(oids):
                futs.append(self.pool.submit(fetch, self.source, oids[i + _WINDOW],
                                             ObjType.CHUNK))
            futs[i] = None  # type: ignore[call-overload]
            yield data

    def file_pieces(self, storage: Storage, oid: ObjectId | None, data: bytes,
                    entry: Entry | None = None) -> Iterator[bytes]:
        if storage == Storage.INLINE:
            yield data
            return
        assert oid is not None
        if storage == Storage.PACKED:
            assert entry is not None
            yield packed_bytes(self._pack(oid), entry)
            return
        if storage == Storage.CHUNK:
            yield from self._chunks([oid])
        else:
            yield from self._chunks(self.reader.blob(oid).oids)

    def _pack(self, oid: ObjectId) -> bytes:
        """The pack most recently used: a directory's small files share one."""
        if self._last_pack[0] != oid:
            self._last_pack = (oid, fetch(self.source, oid, ObjType.CHUNK))
        return self._last_pack[1]

    def write_file(self, dest: Path, pieces: Iterator[bytes], mode: int | None,
                   mtime_ns: int | None, size: int | None = None) -> None:
        """Write to a fresh temp file (O_EXCL: never through a symlink a tree planted),
        set mode and mtime on the descriptor, then rename into place."""
        fd, tmpname = tempfile.mkstemp(prefix=f".{dest.name[:40]}.", suffix=".cas-tmp",
                                       dir=dest.parent)
        written = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in pieces:
                    f.write(piece)
                    written += len(piece)
                    self.progress(len(piece))
                if size is not None and written != size:
                    raise StoreError(f"{dest}: restored {written} bytes, expected {size}")
                f.flush()
                os.fchmod(f.fileno(), 0o644 if mode is None else mode)
                if mtime_ns is not None:
                    os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))
            os.rename(tmpname, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmpname)
            raise

    def entry(self, e: Entry, dest: Path) -> None:
        if e.kind == Kind.DIR:
            self.tree(e.oid, dest)  # type: ignore[arg-type]
            os.chmod(dest, e.mode)
            os.utime(dest, ns=(e.mtime_ns, e.mtime_ns))
        elif e.kind == Kind.SYMLINK:
            os.symlink(os.fsdecode(e.data), dest)
            os.utime(dest, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        else:
            assert e.storage is not None
            self.write_file(dest, self.file_pieces(e.storage, e.oid, e.data, e), e.mode,
                            e.mtime_ns, e.size)

    def tree(self, oid: ObjectId, dest: Path) -> None:
        dest.mkdir(mode=0o700)
        for e in self.reader.dir(oid).entries:
            self.entry(e, dest / os.fsdecode(e.name))


def restore(source: ObjectSource, oid: ObjectId, dest: Path, subpath: str = "",
            progress: Progress | None = None) -> None:
    """Materialise ``oid`` (optionally a path inside it) at ``dest``, which must not exist."""
    if os.path.lexists(dest):
        raise StoreError(f"{dest} already exists; refusing to overwrite")
    r = Restorer(source, progress)
    try:
        kind = stored_type(source, oid)  # a hint: every fetch below checks the type
        if subpath:
            if kind != ObjType.TREE:
                raise NotFound(f"{oid} is not a tree, so it has no path {subpath!r}")
            from casstore.reader import root_entry

            r.entry(r.reader.lookup(root_entry(oid), subpath), dest)
        elif kind == ObjType.TREE:
            r.tree(oid, dest)
            os.chmod(dest, 0o755)
        else:
            storage = Storage.BLOB if kind == ObjType.BLOB else Storage.CHUNK
            r.write_file(dest, r.file_pieces(storage, oid, b""), None, None)
    finally:
        r.close()

