"""``cas get``: materialise a file or tree with exact bytes, modes, symlinks and mtimes.

Each file is written to a temporary name beside its destination and renamed only
once every chunk has verified (hash, type, and its length against the manifest),
so a corrupt object can stop a restore but never leave wrong bytes under a real
name.  Chunks are fetched and verified on a small thread pool (zstd and BLAKE3
release the GIL).

Trees are walked iteratively through directory file descriptors (``*at`` calls):
a crafted tree thousands of levels deep meets neither Python's recursion limit
nor PATH_MAX.  Every OS error becomes a one-line error; a full disk or a lack of
free inodes is :class:`NoSpace`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import FormatError, NotFound, StoreError
from casstore.fileio.fsutil import os_errors
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Entry, Kind, Storage
from casstore.sources.base import ObjectSource, fetch, stored_type
from casstore.store.progress import Progress, no_progress
from casstore.view.reader import TreeReader, packed_bytes, root_entry

_WINDOW = 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Frame:
    """A directory being filled: its fd, the entries left, and its own mode/mtime."""

    fd: int
    label: str
    entries: Iterator[Entry]
    entry: Entry | None  # None for the top: its mode is set by the caller


class Restorer:
    """Writes entries below a destination, verifying every chunk first."""

    def __init__(self, source: ObjectSource, progress: Progress | None = None) -> None:
        self.source = source
        self.reader = TreeReader(source, chunk_cache_bytes=0)
        self.progress = progress or no_progress
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        self._last_pack: tuple[ObjectId | None, bytes] = (None, b"")

    def close(self) -> None:
        self.pool.shutdown()

    def _chunks(self, parts: list[tuple[ObjectId, int | None]], whose: ObjectId) -> Iterator[bytes]:
        """Verified chunks in order, fetched ahead on the pool; each must have the
        length its manifest (or tree entry) gives, else nothing more is written."""
        futs = [self.pool.submit(fetch, self.source, o, ObjType.CHUNK) for o, _n in parts[:_WINDOW]]
        for i, (oid, want) in enumerate(parts):
            data = futs[i].result()
            if i + _WINDOW < len(parts):
                futs.append(self.pool.submit(fetch, self.source, parts[i + _WINDOW][0],
                                             ObjType.CHUNK))
            futs[i] = None  # type: ignore[call-overload]
            if want is not None and len(data) != want:
                raise FormatError(f"chunk {oid} has {len(data)} bytes, but {whose} "
                                  f"says {want}")
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
            yield from self._chunks([(oid, entry.size if entry is not None else None)], oid)
            return
        yield from self._chunks(self._blob_parts(oid, entry), oid)

    def _blob_parts(self, oid: ObjectId, entry: Entry | None) -> list[tuple[ObjectId, int]]:
        """(chunk id, length) of each chunk of a blob, as its manifest says."""
        blob = self.reader.blob(oid)
        if entry is not None and blob.size != entry.size:
            raise FormatError(f"blob {oid} holds {blob.size} bytes, the entry says {entry.size}")
        ends = blob.starts[1:] + [blob.size]
        return [(o, e - s) for o, s, e in zip(blob.oids, blob.starts, ends, strict=True)]

    def _fetch_and_write(self, fd: int, oid: ObjectId, offset: int, want: int,
                         blob: ObjectId) -> int:
        """On a pool thread: verify one chunk (hash, type, manifest length), pwrite it."""
        data = fetch(self.source, oid, ObjType.CHUNK)
        if len(data) != want:
            raise FormatError(f"chunk {oid} has {len(data)} bytes, but {blob} says {want}")
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        return want

    def _write_blob(self, fd: int, oid: ObjectId, entry: Entry | None) -> int:
        """Write a blob's chunks at their offsets from the pool, _WINDOW in flight.

        Writing is about half of a restore's time: done on the main thread it
        left one core idle while the other decompressed.
        """
        parts = self._blob_parts(oid, entry)
        starts, pos = [], 0
        for _o, n in parts:
            starts.append(pos)
            pos += n
        futs: list = []
        written = 0
        try:
            for i, (cid, n) in enumerate(parts):
                futs.append(self.pool.submit(self._fetch_and_write, fd, cid, starts[i], n, oid))
                if len(futs) >= _WINDOW:
                    written += self._done(futs.pop(0))
            while futs:
                written += self._done(futs.pop(0))
        finally:
            for f in futs:
                f.cancel()
            for f in futs:
                if not f.cancelled():
                    f.exception()  # wait: the fd is closed after we return
        return written

    def _done(self, fut) -> int:
        n = fut.result()
        self.progress(n)
        return n

    def _pack(self, oid: ObjectId) -> bytes:
        """The pack most recently used: a directory's small files share one."""
        if self._last_pack[0] != oid:
            self._last_pack = (oid, fetch(self.source, oid, ObjType.CHUNK))
        return self._last_pack[1]

    def write_file(self, dest: Path, pieces: Iterator[bytes] | None, mode: int | None,
                   mtime_ns: int | None, size: int | None = None,
                   blob: tuple[ObjectId, Entry | None] | None = None) -> None:
        """Write a file at a path (see :meth:`write_file_at`)."""
        with os_errors(str(dest)):
            dfd = os.open(dest.parent, _DIR_FLAGS)
        try:
            self.write_file_at(dfd, os.fsencode(dest.name), str(dest), pieces, mode, mtime_ns,
                               size, blob)
        finally:
            os.close(dfd)

    def write_file_at(self, dir_fd: int, name: bytes, label: str, pieces: Iterator[bytes] | None,
                      mode: int | None, mtime_ns: int | None, size: int | None = None,
                      blob: tuple[ObjectId, Entry | None] | None = None) -> None:
        """Write to a fresh temp file (O_EXCL|O_NOFOLLOW: never through a symlink a tree
        planted), set mode and mtime on the descriptor, then rename into place.

        The bytes are ``pieces`` in order, or with ``blob`` a blob's chunks written
        in parallel at their offsets."""
        tmp = b"." + name[:40] + b"." + os.urandom(6).hex().encode() + b".cas-tmp"
        with os_errors(label):
            fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd)
        try:
            with os_errors(label):
                written = 0
                if blob is not None:
                    written = self._write_blob(fd, *blob)
                for piece in pieces or ():
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view):]
                    written += len(piece)
                    self.progress(len(piece))
                if size is not None and written != size:
                    raise StoreError(f"{label}: restored {written} bytes, expected {size}")
                os.fchmod(fd, 0o644 if mode is None else mode)
                if mtime_ns is not None:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.close(fd)
                fd = -1
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise

    def entry(self, e: Entry, dest: Path) -> None:
        """Write one entry (a whole subtree for a directory) at ``dest``."""
        with os_errors(str(dest)):
            dfd = os.open(dest.parent, _DIR_FLAGS)
        try:
            if e.kind == Kind.DIR:
                self._tree_at(dfd, os.fsencode(dest.name), str(dest), e.oid, e)  # type: ignore[arg-type]
            else:
                self._leaf_at(dfd, os.fsencode(dest.name), str(dest), e)
        finally:
            os.close(dfd)

    def tree(self, oid: ObjectId, dest: Path) -> None:
        """Write a tree at ``dest`` (left 0700: the caller sets the root's mode)."""
        with os_errors(str(dest)):
            dfd = os.open(dest.parent, _DIR_FLAGS)
        try:
            self._tree_at(dfd, os.fsencode(dest.name), str(dest), oid, None)
        finally:
            os.close(dfd)

    def _leaf_at(self, dir_fd: int, name: bytes, label: str, e: Entry) -> None:
        if e.kind == Kind.SYMLINK:
            if not e.data or b"\0" in e.data:
                raise FormatError(f"{label}: symlink target is empty or contains a NUL byte")
            with os_errors(label):
                os.symlink(e.data, name, dir_fd=dir_fd)
                os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dir_fd,
                         follow_symlinks=False)
            return
        assert e.storage is not None
        if e.storage == Storage.BLOB:
            assert e.oid is not None
            self.write_file_at(dir_fd, name, label, None, e.mode, e.mtime_ns, e.size,
                               blob=(e.oid, e))
            return
        self.write_file_at(dir_fd, name, label, self.file_pieces(e.storage, e.oid, e.data, e),
                           e.mode, e.mtime_ns, e.size)

    def _tree_at(self, dir_fd: int, name: bytes, label: str, oid: ObjectId,
                 top: Entry | None) -> None:
        """Depth first with an explicit stack; a directory's mode and mtime are set
        when its last child is written (a 0555 directory can still be filled)."""
        stack: list[_Frame] = []
        try:
            stack.append(_Frame(self._mkdir(dir_fd, name, label), label,
                                iter(self.reader.dir(oid).entries), top))
            while stack:
                f = stack[-1]
                e = next(f.entries, None)
                if e is None:
                    stack.pop()
                    try:
                        if f.entry is not None:
                            with os_errors(f.label):
                                os.fchmod(f.fd, f.entry.mode)
                                os.utime(f.fd, ns=(f.entry.mtime_ns, f.entry.mtime_ns))
                    finally:
                        os.close(f.fd)
                    continue
                child = os.path.join(f.label, os.fsdecode(e.name))
                if e.kind == Kind.DIR:
                    assert e.oid is not None
                    entries = iter(self.reader.dir(e.oid).entries)
                    stack.append(_Frame(self._mkdir(f.fd, e.name, child), child, entries, e))
                else:
                    self._leaf_at(f.fd, e.name, child, e)
        finally:
            for f in stack:
                os.close(f.fd)

    @staticmethod
    def _mkdir(dir_fd: int, name: bytes, label: str) -> int:
        with os_errors(label):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


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
            r.entry(r.reader.lookup(root_entry(oid), subpath), dest)
        elif kind == ObjType.TREE:
            r.tree(oid, dest)
            with os_errors(str(dest)):
                os.chmod(dest, 0o755)
        elif kind == ObjType.BLOB:
            r.write_file(dest, None, None, None, blob=(oid, None))
        else:
            r.write_file(dest, r.file_pieces(Storage.CHUNK, oid, b""), None, None)
    finally:
        r.close()
