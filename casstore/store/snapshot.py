"""``cas put``: turn files and directories into stored objects.

Small files go into packs shared with their directory's other small files, so a
directory of Julia sources costs a few fetches, not one per file, and trees hold
metadata only.  Files up to ``chunk_min`` become a single chunk; larger files are
cut with FastCDC and listed in a blob manifest.  Hashing, compression and writes
run on a thread pool (BLAKE3, zstd and file I/O all release the GIL), so both cores
work on a fresh put.

Files are read with ``pread`` into private buffers, never mapped: the bytes that
are hashed are then exactly the bytes that are compressed, even if another process
writes the file meanwhile, and a file that shrinks under us is a short read (an
error) rather than SIGBUS.  A file whose size, mtime or ctime differs after the
read than before is read again a bounded number of times, then refused.

Directories are walked iteratively through directory file descriptors (``*at``
calls), so neither Python's recursion limit nor PATH_MAX bounds the depth.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from casstore.errors import (
    FileChanged,
    NameTooLong,
    UnsupportedFile,
)
from casstore.fileio.fsutil import os_errors
from casstore.format.chunking import chunk_spans
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import (
    MAX_NAME,
    ChunkRef,
    Entry,
    Kind,
    Storage,
    check_name,
    encode_blob,
    encode_tree,
)
from casstore.store.progress import Progress, no_progress
from casstore.store.writable import Store

_WINDOW = 32 << 20  # bytes read per pread window (at least 4 * chunk_max is used)
_READ_TRIES = 3  # a file that keeps changing is read at most this often, then refused
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _default_workers() -> int:
    """Twice the cores (at least 4): a worker waiting in fsync leaves its core to
    another that compresses, and on a shared node more runnable threads hold their
    share of the CPU.  Memory stays bounded by the two read windows."""
    return min(32, max(4, 2 * (os.cpu_count() or 2)))


def _fmt(label: str | bytes) -> str:
    return os.fsdecode(label) if isinstance(label, bytes) else label


@dataclass
class _OpenDir:
    """One directory being walked: its fd, sorted names, and entries made so far."""

    fd: int
    label: str
    names: list[bytes]
    name: bytes = b""
    st: os.stat_result | None = None
    pos: int = 0
    entries: list[Entry] = field(default_factory=list)


class Snapshot:
    """One put operation: a thread pool, a batch of new index entries, a progress hook."""

    def __init__(self, store: Store, progress: Progress | None = None,
                 workers: int | None = None) -> None:
        self.store = store
        self.s = store.settings
        self.progress = progress or no_progress
        self.pool = ThreadPoolExecutor(max_workers=workers or _default_workers())
        self.window = max(_WINDOW, 4 * self.s.chunk_max, 1 << 16)
        self._bufs: list[bytearray] = []

    def __enter__(self) -> Snapshot:
        self._batch = self.store.batched_index()
        self._batch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.pool.shutdown(wait=True)
        finally:
            self._batch.__exit__(None, None, None)

    def put_meta(self, kind: ObjType, raw: bytes) -> ObjectId:
        return self.store.put_raw(kind, raw)

    # -- files -------------------------------------------------------------------
    def put_file_at(self, dir_fd: int | None, name: bytes, label: str,
                    st: os.stat_result) -> tuple[Storage, ObjectId | None, bytes, os.stat_result]:
        """Store a regular file's bytes; returns how the tree should reference them.

        Also returns the file's stat as read (size and mtime that match the bytes).
        """
        last = st
        for _ in range(_READ_TRIES):
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino) != (
                        st.st_dev, st.st_ino):
                    raise FileChanged(f"{label} was replaced while being read")
                got = self._read_fd(fd, before.st_size)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if got is not None and _same(before, after):
                storage, oid, data = got
                return storage, oid, data, after
            last = after
        raise FileChanged(f"{label} changed while being read ({_READ_TRIES} tries, now "
                          f"{last.st_size} bytes); stop its writers or copy it first")

    def _read_fd(self, fd: int, size: int) -> tuple[Storage, ObjectId | None, bytes] | None:
        """The file's storage, or None if it was not ``size`` bytes long throughout."""
        if size <= self.s.inline_max:
            data = os.pread(fd, size + 1, 0)
            if len(data) != size:
                return None
            self.progress(size)
            return Storage.INLINE, None, data
        refs = self._put_chunks(fd, size)
        if refs is None:
            return None
        if len(refs) == 1:
            return Storage.CHUNK, refs[0].oid, b""
        return Storage.BLOB, self.put_meta(ObjType.BLOB, encode_blob(refs)), b""

    def put_single_file(self, path: Path) -> ObjectId:
        """A lone file's id (its chunk or blob manifest), for ``cas put FILE``."""
        label = str(path)
        st = _check_kind(None, os.fsencode(path), label)
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedFile(f"{path}: not a regular file or directory")
        storage, oid, data, _st = self.put_file_at(None, os.fsencode(path), label, st)
        if storage == Storage.INLINE:
            return self.put_meta(ObjType.CHUNK, data)
        assert oid is not None
        return oid

    def _buffer(self, i: int) -> bytearray:
        """Two reusable read windows: fresh pages for every window cost page faults."""
        while len(self._bufs) <= i:
            self._bufs.append(bytearray(self.window))
        return self._bufs[i]

    def _put_chunks(self, fd: int, size: int) -> list[ChunkRef] | None:
        """Read ``size`` bytes in windows, cut them, hash+compress+write on the pool.

        FastCDC decides each cut from at most ``max(64 KiB, chunk_max)`` bytes after
        the chunk's start, so a chunk whose look-ahead fits in the window is cut
        exactly as in one pass over the whole file; the rest of the window moves to
        the front of the next one.  Each chunk is a slice of a private buffer that
        nothing rewrites until its future is done: the hash and the compressed bytes
        always describe the same bytes.  None if the file was shorter or longer.
        """
        look = max(1 << 16, self.s.chunk_max)
        refs: list[ChunkRef] = []
        inflight: list[list[tuple[int, Future]]] = [[], []]
        pos, fill, cur = 0, 0, 0
        try:
            while True:
                buf = memoryview(self._buffer(cur))
                want = min(self.window, size - pos)
                while fill < want:
                    n = os.preadv(fd, [buf[fill:want]], pos + fill)
                    if n == 0:
                        return None  # shrank
                    fill += n
                eof = pos + fill == size
                if eof and os.pread(fd, 1, size):
                    return None  # grew
                done = 0
                spans = chunk_spans(buf[:fill], self.s.chunk_min, self.s.chunk_avg,
                                    self.s.chunk_max)
                try:
                    for off, length in spans:
                        if not eof and off + look > fill:
                            break
                        fut = self.pool.submit(self.store.put_raw, ObjType.CHUNK,
                                               buf[off:off + length])
                        inflight[cur].append((len(refs), fut))
                        refs.append(ChunkRef(None, length))  # type: ignore[arg-type]
                        done = off + length
                finally:
                    spans.close()
                if eof:
                    break
                nxt = 1 - cur
                self._drain(inflight[nxt], refs)  # its chunks must be done before reuse
                tail = fill - done
                self._buffer(nxt)[:tail] = buf[done:fill]
                pos, fill, cur = pos + done, tail, nxt
            self._drain(inflight[1 - cur], refs)
            self._drain(inflight[cur], refs)
        except BaseException:
            futs = [f for lst in inflight for _i, f in lst]
            for f in futs:
                f.cancel()
            wait(futs)
            raise
        return refs

    def _drain(self, inflight: list[tuple[int, Future]], refs: list[ChunkRef]) -> None:
        for i, fut in inflight:
            refs[i] = ChunkRef(fut.result(), refs[i].length)
            self.progress(refs[i].length)
        inflight.clear()

    # -- trees -------------------------------------------------------------------
    def put_dir(self, path: Path) -> ObjectId:
        """Store a directory and everything below it; returns its tree id."""
        label = str(path)
        with os_errors(label):
            fd = os.open(path, _DIR_FLAGS)
        return self._walk(fd, label)

    def _open_dir(self, fd: int, label: str, name: bytes = b"",
                  st: os.stat_result | None = None) -> _OpenDir:
        try:
            with os_errors(label):
                names = sorted(os.fsencode(n) for n in os.listdir(fd))
        except BaseException:
            os.close(fd)
            raise
        return _OpenDir(fd, label, names, name, st)

    def _walk(self, fd: int, label: str) -> ObjectId:
        """Depth-first, post-order, with an explicit stack of open directories."""
        stack = [self._open_dir(fd, label)]
        try:
            while True:
                top = stack[-1]
                if top.pos < len(top.names):
                    name = top.names[top.pos]
                    top.pos += 1
                    child = os.path.join(top.label, os.fsdecode(name))
                    _check_entry_name(name, child)
                    st = _check_kind(top.fd, name, child)
                    if stat.S_ISDIR(st.st_mode):
                        with os_errors(child):
                            cfd = os.open(name, _DIR_FLAGS, dir_fd=top.fd)
                        stack.append(self._open_dir(cfd, child, name, st))
                    else:
                        top.entries.append(self._leaf(top.fd, name, child, name, st))
                    continue
                stack.pop()
                os.close(top.fd)
                tree = self.put_meta(ObjType.TREE, encode_tree(self._pack(top.entries)))
                if not stack:
                    return tree
                assert top.st is not None
                stack[-1].entries.append(Entry(top.name, Kind.DIR, stat.S_IMODE(top.st.st_mode),
                                               0, top.st.st_mtime_ns, None, tree))
        finally:
            for d in stack:
                os.close(d.fd)

    def _leaf(self, dir_fd: int | None, name: bytes, label: str, entry_name: bytes,
              st: os.stat_result) -> Entry:
        """The entry of a symlink or regular file."""
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            with os_errors(label):
                target = os.readlink(name, dir_fd=dir_fd)
            return Entry(entry_name, Kind.SYMLINK, mode, len(target), st.st_mtime_ns,
                         data=target)
        with os_errors(label):
            storage, oid, data, got = self.put_file_at(dir_fd, name, label, st)
        return Entry(entry_name, Kind.FILE, mode, got.st_size, got.st_mtime_ns, storage, oid,
                     data)

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
        """The tree entry of one top-level path (walking into directories)."""
        label = str(path)
        _check_entry_name(name, label)
        st = _check_kind(None, os.fsencode(path), label)
        if stat.S_ISDIR(st.st_mode):
            return Entry(name, Kind.DIR, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None,
                         self.put_dir(path))
        return self._leaf(None, os.fsencode(path), label, name, st)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _check_entry_name(name: bytes, label: str) -> None:
    """Refuse names a tree cannot hold (FORMAT §4), naming the path."""
    if len(name) > MAX_NAME:
        raise NameTooLong(f"{label}: file name is {len(name)} bytes, the limit is {MAX_NAME}")
    try:
        check_name(name)
    except Exception:
        raise UnsupportedFile(f"{label}: invalid file name") from None


def _check_kind(dir_fd: int | None, name: bytes, label: str) -> os.stat_result:
    """lstat a path and refuse what a tree cannot hold, naming the path."""
    with os_errors(label):
        st = os.lstat(name, dir_fd=dir_fd)
    m = st.st_mode
    if stat.S_ISREG(m):
        if st.st_nlink > 1:
            raise UnsupportedFile(f"{label}: hard links are not supported")
        return st
    if stat.S_ISDIR(m) or stat.S_ISLNK(m):
        return st
    what = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(m), "special file")
    raise UnsupportedFile(f"{label}: {what}s are not supported")


def total_size(paths: list[Path]) -> int:
    """Bytes a put will read, for the progress bar (a cheap stat walk; never fails)."""
    total = 0
    for p in paths:
        try:
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
        except OSError:
            continue
    return total


def put_paths(store: Store, paths: list[Path], progress: Progress | None = None,
              ref: str | None = None) -> ObjectId:
    """``cas put``: one directory gives its tree, one file its blob, several a new tree.

    With ``ref``, the ref is written before the store lock is released: gc sweeps
    under the exclusive lock, so it can never see the objects without the ref.
    """
    if ref is not None:
        from casstore.format.names import check_ref_name

        check_ref_name(ref)
    with os_errors(", ".join(map(str, paths))), store.lock():
        with Snapshot(store, progress) as snap:
            oid = _put(snap, paths)
        if ref is not None:
            store.set_ref(ref, oid)
        return oid


def _put(snap: Snapshot, paths: list[Path]) -> ObjectId:
    if len(paths) == 1:
        p = paths[0]
        st = _check_kind(None, os.fsencode(p), str(p))
        if stat.S_ISDIR(st.st_mode):
            return snap.put_dir(p)
        if stat.S_ISREG(st.st_mode):
            return snap.put_single_file(p)
    entries = [snap.entry_for(p, os.fsencode(os.path.basename(os.path.abspath(p))))
               for p in paths]
    return snap.put_meta(ObjType.TREE, encode_tree(snap._pack(entries)))
