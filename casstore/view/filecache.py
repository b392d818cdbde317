"""Client-side file cache: large files are fetched whole, ahead of the reader.

Julia dlopens a ~150 MB sysimage and touches almost all of it, so fetching it chunk
by chunk on demand would put one fetch + verify on the critical path of every
page fault.  Instead the first read of a large file starts background threads
that copy *every* chunk of the file, each verified against its id, into a
private file, a few chunks at a time in file order; reads are then served with
``os.pread`` from it.

Layering: the cache sits on top of a (composed) :class:`ObjectSource`, e.g.
``KnownBad(ObjectCache(LocalSource))``: it fetches chunks with ``source.fetch``
and is told a file's chunk layout by its caller (:mod:`casstore.view.vfs`); it knows
nothing of readers or trees.

Trust (the daemon runs as root): the cache folder is not
trusted.  It is created 0700 and the cache refuses to start (:class:`UnsafeFolder`)
if it is not a directory of ours that others cannot write.  Verified bytes live
only in a *private* file: created with ``O_EXCL | O_NOFOLLOW`` under a random
name and unlinked at once, so no path leads to the inode readers are served
from, and bytes edited into the folder never reach a reader.  A copy left by an
earlier mount is opened with ``O_NOFOLLOW | O_NONBLOCK``, must be a regular file
owned by us, and each chunk of it is re-hashed before it is copied into the
private file.  When a file was fetched, a persistent copy for the next mount is
written under a fresh ``O_EXCL`` name and renamed into place (rename replaces a
planted symlink; it never writes through one).  A per-chunk bitmap records what
is verified, so a corrupt or missing chunk only fails the reads that touch it;
those reads go to the reader, which raises the typed error.

Concurrency: :meth:`FileCache.read` may be called from several threads; the
table of copies is guarded by a lock, and an fd is only closed under that lock
by eviction or :meth:`close`, never while a read uses it.  The folder plus the
private copies are bounded by ``max_bytes``; least recently used copies go first.
"""

from __future__ import annotations

import bisect
import logging
import os
import signal
import stat as st
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import blake3

from casstore.errors import CasError, FormatError
from casstore.fileio.fsutil import make_private_dir
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Entry, Kind, Storage
from casstore.sources.base import ObjectSource

log = logging.getLogger(__name__)
FILL_WORKERS = 4  # chunks of one file fetched, verified and written at once
REPLAY_WORKERS = 16  # the same for a copy a prefetch-list replay starts (nobody waits yet)
_OPEN_OLD = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Layout(Protocol):
    """A file's chunks: total size, chunk ids and their start offsets."""

    size: int
    oids: list[ObjectId]
    starts: list[int]


def secure_dir(path: Path) -> Path:
    """Create ``path`` 0700 if missing; refuse a folder others could write or own."""
    return make_private_dir(Path(path), "cache folder",
                            "fix it (chown, chmod go-w) or choose another cache_dir")


@dataclass
class _Copy:
    """One file's private copy and which of its chunks are verified."""

    path: Path  # where a persistent copy lives between mounts
    size: int
    oids: list[ObjectId]
    starts: list[int]
    fd: int  # the private, unlinked file readers are served from
    have: list[bool]
    old_fd: int | None = None  # a copy left by an earlier mount (unverified)
    fetched: bool = False
    complete: bool = False  # every chunk verified: reads need no bookkeeping
    done: bool = False
    closed: bool = False
    next: int = 0  # where prefetch workers look for the next chunk nobody took
    workers: int = FILL_WORKERS  # threads filling this copy
    taken: list[bool] = field(default_factory=list)  # a thread is filling it, or did
    settled: list[bool] = field(default_factory=list)  # filled: verified, or failed
    verified: dict[ObjectId, int] = field(default_factory=dict)  # id -> a verified chunk
    filling: dict[ObjectId, int] = field(default_factory=dict)  # id -> its first fill
    errors: int = 0
    last_use: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def span(self, i: int) -> tuple[int, int]:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return self.starts[i], end

    def chunks_for(self, offset: int, end: int) -> range:
        return range(bisect.bisect_right(self.starts, offset) - 1,
                     bisect.bisect_left(self.starts, end))


class FileCache:
    """Whole-file prefetch over an object source; see the module docstring."""

    def __init__(self, source: ObjectSource, folder: Path, max_bytes: int,
                 prefetch_min: int = 4 << 20, wait_s: float = 10.0,
                 workers: int = FILL_WORKERS) -> None:
        self.source = source
        self.workers = max(1, workers)
        secure_dir(Path(folder))
        self.folder = secure_dir(Path(folder) / "files")
        self.max_bytes = max_bytes
        self.prefetch_min = prefetch_min
        self.wait_s = wait_s
        self.copies: dict[ObjectId, _Copy] = {}
        self.closed = False
        self._lock = threading.Lock()
        self.stats = {"prefetches": 0, "hits": 0, "fallbacks": 0, "chunk_errors": 0,
                      "evictions": 0, "rejected_files": 0}

    # -- policy ------------------------------------------------------------------
    def wants(self, entry: Entry) -> bool:
        """Large stored files are served from whole-file copies."""
        return (entry.kind == Kind.FILE and entry.storage in (Storage.CHUNK, Storage.BLOB)
                and entry.oid is not None and self.prefetch_min <= entry.size <= self.max_bytes)

    def used_bytes(self) -> int:
        """Bytes held in private copies (the files readers are served from)."""
        return sum(c.size for c in list(self.copies.values()))

    # -- reads -------------------------------------------------------------------
    def read(self, key: ObjectId, file_size: int, offset: int, size: int,
             layout: Callable[[], Layout]) -> bytes | None:
        """Bytes from the verified copy of file ``key``, or None: read it directly.

        ``layout`` is called only when the copy is started (it may fetch a manifest).
        """
        end = min(file_size, offset + size)
        if offset >= end:
            return b""
        copy = self.copies.get(key)  # one dict read: atomic, no lock on the hot path
        if copy is None:
            try:
                copy = self._get(key, layout())
            except OSError as exc:  # cache folder unusable: serve from the source
                log.warning("cannot cache %s: %s", key, exc)
                self.stats["fallbacks"] += 1
                return None
        copy.last_use = time.monotonic()
        if copy.complete or self._wait(copy, copy.chunks_for(offset, end)):
            with self._lock:
                if not copy.closed:
                    self.stats["hits"] += 1
                    return os.pread(copy.fd, end - offset, offset)
        self.stats["fallbacks"] += 1
        return None

    def start(self, key: ObjectId, layout: Callable[[], Layout],
              workers: int = REPLAY_WORKERS) -> bool:
        """Start the whole-file copy of file ``key`` without waiting for any of it
        (prefetch-list replay), ``workers`` chunks at a time: over a link the
        round trips, not the bytes, bound it.  False if the cache folder is
        unusable."""
        if key in self.copies:
            return True
        try:
            self._get(key, layout(), workers)
        except OSError as exc:
            log.warning("cannot cache %s: %s", key, exc)
            return False
        return True

    def _wait(self, copy: _Copy, need: range) -> bool:
        """Until the chunks are verified (bounded); False if one failed.

        A needed chunk no worker has taken yet is filled here, in the reader's
        thread, into the copy: one fetch and verify, as a direct read would cost,
        and the bytes are then in the copy for every later read of that chunk."""
        with copy.cond:
            mine = [i for i in need if not copy.taken[i]]
            for i in mine:
                copy.taken[i] = True
        for i in mine:
            self._settle(copy, i)
        deadline = time.monotonic() + self.wait_s
        with copy.cond:
            while not all(copy.have[i] for i in need):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed or all(copy.settled[i] for i in need):
                    return False
                copy.cond.wait(left)
        return True

    # -- prefetch ----------------------------------------------------------------
    def _get(self, key: ObjectId, layout: Layout, workers: int | None = None) -> _Copy:
        with self._lock:
            copy = self.copies.get(key)
            if copy is not None:
                return copy
            if self.closed:
                raise OSError("file cache is closed")
            self._make_room(layout.size)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".private-")  # O_EXCL|O_NOFOLLOW
            os.unlink(tmp)  # from now on no path leads to the bytes readers get
            path = self.folder / key.hex
            n = len(layout.oids)
            copy = _Copy(path, layout.size, list(layout.oids), list(layout.starts), fd,
                         [False] * n, old_fd=self._open_old(path), taken=[False] * n,
                         settled=[False] * n, workers=max(1, workers or self.workers))
            self.copies[key] = copy
            self.stats["prefetches"] += 1
        copy.thread = threading.Thread(target=self._fill, args=(copy,), daemon=True,
                                       name=f"prefetch-{key.hex[:8]}")
        copy.thread.start()
        return copy

    def _open_old(self, path: Path) -> int | None:
        """A copy from an earlier mount, if it is a regular file of ours; else None."""
        try:
            fd = os.open(path, _OPEN_OLD)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symlink was planted; or a folder, ...
            self._reject(path, f"cannot open it safely ({exc.strerror})")
            return None
        info = os.fstat(fd)
        if not st.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            self._reject(path, "not a regular file owned by this process")
            return None
        return fd

    def _reject(self, path: Path, why: str) -> None:
        log.warning("cache file %s ignored and removed: %s", path, why)
        self.stats["rejected_files"] += 1
        try:
            os.unlink(path)  # removes a planted name, never what a symlink points to
        except IsADirectoryError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)

    def _fill(self, copy: _Copy) -> None:
        """Verify or fetch every chunk, ``workers`` at a time in file order; a bad
        chunk is skipped, not fatal.

        Several at once: over HTTP each chunk is a round trip, and decompressing and
        hashing (native calls that release the GIL) then use every core."""
        # Signals belong to the thread that runs the FUSE loop, never to a worker
        # (threads started below inherit this mask).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            helpers = [threading.Thread(target=self._guarded_worker, args=(copy,), daemon=True,
                                        name=f"{threading.current_thread().name}-{n}")
                       for n in range(1, min(copy.workers, len(copy.oids)))]
            for t in helpers:
                t.start()
            self._guarded_worker(copy)
            for t in helpers:
                t.join()
            with copy.cond:  # chunks a reader took are filled in the reader's thread;
                # until they are settled the copy is not done, so never evicted
                # (its fd closed) under that reader's write
                copy.cond.wait_for(lambda: self.closed or all(copy.settled))
            if self.closed:
                return
            os.ftruncate(copy.fd, copy.size)
            copy.complete = copy.errors == 0 and all(copy.have)
            if copy.complete and copy.fetched:
                self._persist(copy)
        except Exception:  # noqa: BLE001 - a thread must not die silently
            if not self.closed:  # at unmount the fd may close under us: expected
                log.exception("prefetch of %s failed", copy.path.name)
        finally:
            if copy.old_fd is not None:
                os.close(copy.old_fd)
                copy.old_fd = None
            with copy.cond:
                copy.done = True
                copy.cond.notify_all()

    def _guarded_worker(self, copy: _Copy) -> None:
        """:meth:`_fill_worker`; an unexpected error stops this worker and leaves the
        copy incomplete (its unfilled chunks are then read from the source)."""
        try:
            self._fill_worker(copy)
        except Exception:  # noqa: BLE001 - a thread must not die silently
            with copy.cond:
                copy.errors += 1
            if not self.closed:  # at unmount the fd may close under us: expected
                log.exception("prefetch of %s failed", copy.path.name)

    def _fill_worker(self, copy: _Copy) -> None:
        """Take the next chunk nobody took, fill it; until none is left."""
        while not self.closed:
            with copy.cond:
                i = copy.next
                while i < len(copy.oids) and copy.taken[i]:
                    i += 1
                if i >= len(copy.oids):
                    return
                copy.next = i + 1
                copy.taken[i] = True
            self._settle(copy, i)

    def _settle(self, copy: _Copy, i: int) -> None:
        """Fill chunk ``i`` (taken by this thread) and record the outcome; a failure
        leaves it missing, and its reads go to the source."""
        ok = False
        try:
            self._fill_one(copy, i, copy.oids[i])
            ok = True
        except CasError as exc:
            with self._lock:
                self.stats["chunk_errors"] += 1
            log.warning("prefetch skipped a chunk: %s", exc)
        except Exception:  # noqa: BLE001 - a reader or worker must not die of it
            if not self.closed:  # at unmount the fd may close under us: expected
                log.exception("prefetch of %s failed", copy.path.name)
        finally:
            with copy.cond:
                copy.have[i] = ok
                if ok:
                    copy.verified.setdefault(copy.oids[i], i)
                copy.errors += not ok
                copy.settled[i] = True
                copy.cond.notify_all()

    def _fill_one(self, copy: _Copy, i: int, oid: ObjectId) -> None:
        lo, hi = copy.span(i)
        if self._copy_within(copy, i, oid):
            return
        if copy.old_fd is not None:
            old = os.pread(copy.old_fd, hi - lo, lo)
            if len(old) == hi - lo and blake3.blake3(old).digest() == oid.digest:
                os.pwrite(copy.fd, old, lo)  # verified now, and kept where nobody writes
                return
        data = self.source.fetch(oid, ObjType.CHUNK)
        if len(data) != hi - lo:
            raise FormatError(f"chunk {oid} has {len(data)} bytes, manifest says {hi - lo}")
        os.pwrite(copy.fd, data, lo)
        copy.fetched = True

    def _copy_within(self, copy: _Copy, i: int, oid: ObjectId) -> bool:
        """A chunk that repeats one verified in this copy is copied inside the private
        file (which only this cache writes), not fetched and verified again; if
        another thread is filling that chunk, after waiting for it.  False: fill it
        (the first time, or the first fill failed)."""
        with copy.cond:
            j = copy.verified.get(oid)
            if j is None:
                k = copy.filling.setdefault(oid, i)
                if k == i:
                    return False
                # the thread filling k only fetches and never waits here: no cycle
                copy.cond.wait_for(lambda: copy.settled[k] or self.closed)
                j = copy.verified.get(oid)
        if j is None:
            return False
        lo, hi = copy.span(i)
        src, src_end = copy.span(j)
        if src_end - src != hi - lo:
            return False
        try:
            pos = 0
            while pos < hi - lo:
                n = os.copy_file_range(copy.fd, copy.fd, hi - lo - pos, src + pos, lo + pos)
                if n <= 0:
                    raise OSError("copy_file_range made no progress")
                pos += n
        except OSError:  # a filesystem without it: through this process
            os.pwrite(copy.fd, os.pread(copy.fd, hi - lo, src), lo)
        return True

    def _persist(self, copy: _Copy) -> None:
        """Leave a copy for the next mount (it is re-verified when opened then)."""
        with self._lock:
            if self._disk_total() + copy.size > self.max_bytes:
                return
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".persist-")
        try:
            pos = 0
            while pos < copy.size:
                n = os.copy_file_range(copy.fd, fd, copy.size - pos, pos, pos)
                if n <= 0:
                    raise OSError("copy_file_range made no progress")
                pos += n
            os.rename(tmp, copy.path)
        except OSError as exc:
            log.warning("cannot keep a copy of %s: %s", copy.path.name, exc)
            Path(tmp).unlink(missing_ok=True)
        finally:
            os.close(fd)

    # -- bounds ------------------------------------------------------------------
    def _disk_total(self) -> int:
        return sum(self._disk_files().values()) + self.used_bytes()

    def _make_room(self, size: int) -> None:
        """Delete kept copies, then least recently used finished private copies,
        until ``size`` fits.  Called with the lock held."""
        on_disk = self._disk_files()
        total = sum(on_disk.values()) + self.used_bytes()
        for name in sorted(on_disk, key=lambda n: on_disk[n]):
            if total + size <= self.max_bytes:
                return
            total -= on_disk[name]
            (self.folder / name).unlink(missing_ok=True)
        victims = sorted((c.last_use, oid) for oid, c in self.copies.items() if c.done)
        for _t, oid in victims:
            if total + size <= self.max_bytes:
                return
            copy = self.copies.pop(oid)
            copy.closed = True
            os.close(copy.fd)
            total -= copy.size
            self.stats["evictions"] += 1

    def _disk_files(self) -> dict[str, int]:
        out = {}
        with os.scandir(self.folder) as it:
            for d in it:
                try:
                    out[d.name] = d.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    continue
        return out

    def close(self) -> None:
        """Stop the prefetch threads, then close their files (never under a writer)."""
        self.closed = True
        for copy in list(self.copies.values()):
            with copy.cond:  # a fill waiting for a reader's chunk stops waiting
                copy.cond.notify_all()
            if copy.thread is not None:
                copy.thread.join(timeout=10)
            with self._lock:
                if (copy.thread is None or not copy.thread.is_alive()) and not copy.closed:
                    copy.closed = True
                    os.close(copy.fd)
        self.copies.clear()

    def summary(self) -> dict:
        return {"dir": str(self.folder), "files": len(self.copies), "bytes": self.used_bytes(),
                "max_bytes": self.max_bytes, **self.stats}
