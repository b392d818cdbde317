"""``cas put``: turn files and directories into stored objects.

Small files go into packs shared with their directory's other small files, so a
directory of Julia sources costs a few fetches, not one per file, and trees hold
metadata only.  Files up to ``chunk_min`` become a single
chunk; larger files are cut with FastCDC and listed in a blob manifest.  Hashing,
compression and writes run on a thread pool (BLAKE3, zstd and file I/O all release
the GIL), so both cores work on a fresh put.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from casstore.chunking import chunk_spans
from casstore.errors import StoreError, UnsupportedFile
from casstore.index import IndexEntry
from casstore.objects import ObjectId, ObjType
from casstore.store import Store
from casstore.trees import ChunkRef, Entry, Kind, Storage, check_name, encode_blob, encode_tree

Progress = Callable[[int], None]
_INDEX_BATCH = 512
_MAX_PENDING = 16


class Snapshot:
    """One put operation: a thread pool, a batch of new index entries, a progress hook."""

    def __init__(self, store: Store, progress: Progress | None = None,
                 workers: int | None = None) -> None:
        self.store = store
        self.s = store.settings
        self.progress = progress or (lambda n: None)
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2)
        self.new: list[tuple[ObjectId, IndexEntry]] = []
        self.new_bytes = 0

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        self.flush()

    def flush(self) -> None:
        if self.new:
            self.store.index.add(self.new)
            self.new = []

    def _record(self, oid: ObjectId, entry: IndexEntry | None) -> None:
        if entry is not None:
            self.new.append((oid, entry))
            self.new_bytes += entry.stored_size
            if len(self.new) >= _INDEX_BATCH:
                self.flush()

    def put_meta(self, kind: ObjType, raw: bytes) -> ObjectId:
        oid, entry = self.store.put_raw(kind, raw)
        self._record(oid, entry)
        return oid

    # -- files -------------------------------------------------------------------
    def put_file(self, path: Path, st: os.stat_result) -> tuple[Storage, ObjectId | None, bytes]:
        """Store a regular file's bytes; returns how the tree should reference them."""
        size = st.st_size
        if size <= self.s.inline_max:
            data = _read_exact(path, size)
            self.progress(size)
            return Storage.INLINE, None, data
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ,
                               flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except (OSError, ValueError) as exc:  # ValueError: it became empty meanwhile
            raise StoreError(f"{path}: cannot read ({exc})") from None
        view = memoryview(mm)
        try:
            if len(mm) != size:
                raise StoreError(f"{path} changed size while being read")
            refs = self._put_chunks(view)
        finally:
            _unmap(mm, view)
        if len(refs) == 1:
            return Storage.CHUNK, refs[0].oid, b""
        return Storage.BLOB, self.put_meta(ObjType.BLOB, encode_blob(refs)), b""

    def put_single_file(self, path: Path) -> ObjectId:
        """A lone file's id (its chunk or blob manifest), for ``cas put FILE``."""
        st = _check_kind(path)
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedFile(f"{path}: not a regular file or directory")
        if st.st_size <= self.s.inline_max:
            data = _read_exact(path, st.st_size)
            self.progress(len(data))
            return self.put_meta(ObjType.CHUNK, data)
        _storage, oid, _ = self.put_file(path, st)
        assert oid is not None
        return oid

    def _put_chunks(self, view: memoryview) -> list[ChunkRef]:
        """Cut, then hash, compress and write chunks on the pool, _MAX_PENDING in flight.

        All cut points are found first: the cutter holds the GIL, so interleaving it
        with the pool only made the hashing threads wait for it.  Chunks are
        zero-copy slices of the mapping: copying them cost more than hashing (fresh
        pages fault in), and a chunk already stored is only ever hashed.
        """
        pending: list[Future] = []
        refs: list[ChunkRef] = []
        spans = chunk_spans(view, self.s.chunk_min, self.s.chunk_avg, self.s.chunk_max)
        try:
            for off, length in list(spans):
                pending.append(self.pool.submit(self.store.put_raw, ObjType.CHUNK,
                                                view[off:off + length]))
                refs.append(ChunkRef(None, length))  # type: ignore[arg-type]
                if len(pending) >= _MAX_PENDING:
                    self._drain(pending, refs, len(refs) - len(pending))
                    pending = []
            self._drain(pending, refs, len(refs) - len(pending))
        except BaseException:
            for fut in pending:
                fut.cancel()
            wait(pending)
            raise
        finally:
            spans.close()  # drop the chunker's view of the mapping
        return refs

    def _drain(self, pending: list[Future], refs: list[ChunkRef], start: int) -> None:
        for i, fut in enumerate(pending):
            oid, entry = fut.result()
            self._record(oid, entry)
            refs[start + i] = ChunkRef(oid, refs[start + i].length)
            self.progress(refs[start + i].length)

    # -- trees -------------------------------------------------------------------
    def put_dir(self, path: Path) -> ObjectId:
        """Store a directory recursively; returns its tree id."""
        entries = []
        with os.scandir(path) as it:
            names = sorted(it, key=lambda d: os.fsencode(d.name))
        for d in names:
            entries.append(self.entry_for(Path(d.path), os.fsencode(d.name)))
        return self.put_meta(ObjType.TREE, encode_tree(self._pack(entries)))

    def _pack(self, entries: list[Entry]) -> list[Entry]:
        """Move small files' bytes into packs of at most about ``pack_max`` bytes.

        The tree then holds metadata only (a stat never decodes file bytes) while a
        directory of small sources still costs one or a few fetches.  Files go into
        packs in name order, so the same directory always gives the same packs.
        """
        out: list[Entry] = []
        batch: list[Entry] = []
        batch_bytes = 0
        for e in entries + [None]:  # type: ignore[list-item]
            small = e is not None and e.storage == Storage.INLINE and e.size > 0
            full = batch_bytes + (e.size if small else 0) > self.s.pack_max
            if batch and (not small or full):
                out.extend(self._flush_pack(batch))
                batch, batch_bytes = [], 0
            if small:
                batch.append(e)
                batch_bytes += e.size
            elif e is not None:
                out.append(e)
        return out

    def _flush_pack(self, batch: list[Entry]) -> list[Entry]:
        pack = self.put_meta(ObjType.CHUNK, b"".join(e.data for e in batch))
        out, offset = [], 0
        for e in batch:
            out.append(replace(e, storage=Storage.PACKED, oid=pack, data=b"", offset=offset))
            offset += e.size
        return out

    def entry_for(self, path: Path, name: bytes) -> Entry:
        """The tree entry of one path (recursing into directories)."""
        try:
            check_name(name)
        except Exception:
            raise UnsupportedFile(f"{path}: invalid file name") from None
        st = _check_kind(path)
        mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
        if stat.S_ISDIR(st.st_mode):
            return Entry(name, Kind.DIR, mode, 0, mtime, None, self.put_dir(path))
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(path))
            return Entry(name, Kind.SYMLINK, mode, len(target), mtime, data=target)
        storage, oid, data = self.put_file(path, st)
        return Entry(name, Kind.FILE, mode, st.st_size, mtime, storage, oid, data)


def _unmap(mm: mmap.mmap, view: memoryview) -> None:
    """Unmap now if no chunk view is still alive; else the last view's owner does.

    After an error, cancelled pool items may still hold slices for a moment;
    closing then would raise BufferError and hide the real error.
    """
    try:
        view.release()
        mm.close()
    except BufferError:
        pass


def _check_kind(path: Path) -> os.stat_result:
    """lstat a path and refuse what a tree cannot hold, naming the path."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from None
    m = st.st_mode
    if stat.S_ISREG(m):
        if st.st_nlink > 1:
            raise UnsupportedFile(f"{path}: hard links are not supported")
        return st
    if stat.S_ISDIR(m) or stat.S_ISLNK(m):
        return st
    what = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(m), "special file")
    raise UnsupportedFile(f"{path}: {what}s are not supported")


def _read_exact(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise StoreError(f"{path} changed size while being read")
    return data


def total_size(paths: list[Path]) -> int:
    """Bytes a put will read, for the progress bar (a cheap stat walk)."""
    total = 0
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            for root, _dirs, files in os.walk(p):
                for f in files:
                    try:
                        st = os.lstat(os.path.join(root, f))
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        elif p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def put_paths(store: Store, paths: list[Path], progress: Progress | None = None) -> ObjectId:
    """``cas put``: one directory gives its tree, one file its blob, several a new tree."""
    with store.lock(), Snapshot(store, progress) as snap:
        if len(paths) == 1:
            p = paths[0]
            st = _check_kind(p)
            if stat.S_ISDIR(st.st_mode):
                return snap.put_dir(p)
            if stat.S_ISREG(st.st_mode):
                return snap.put_single_file(p)
        entries = [snap.entry_for(p, os.fsencode(os.path.basename(os.path.abspath(p))))
                   for p in paths]
        return snap.put_meta(ObjType.TREE, encode_tree(snap._pack(entries)))
