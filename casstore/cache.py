"""Client-side file cache: large files are fetched whole, ahead of the reader.

Julia dlopens a ~150 MB sysimage and touches almost all of it, so fetching it chunk
by chunk on demand would put one fetch + verify on the critical path of every
page fault.  Instead the first read of a large file starts a background thread
that copies *every* chunk of the file, each verified against its id, into a file
under the cache folder (never into the source, which may be read-only).  Reads
are then served with ``os.pread`` from that copy.

Trust: a chunk's bytes count as present only after this process has verified
them (fetched and hashed, or re-hashed from a copy left by an earlier mount).  A
per-chunk bitmap records that, so a corrupt or missing chunk only fails the reads
that touch it; those reads go to the :class:`TreeReader`, which raises the typed
error.  The fetch goes through :func:`casstore.remote.fetch` on the reader's
``ObjectSource``, so an HTTP remote slots in without changes here.

Concurrency: only the FUSE thread calls :meth:`FileCache.read` (and evicts);
each prefetch thread writes its own file and publishes progress under a lock.
The folder is bounded by ``max_bytes``; least recently used complete copies are
deleted first.

Known-bad objects (as S3QL does): :class:`KnownBad` remembers every object that
failed.  A corrupt object (fails its hash, does not decode) is remembered for the
life of the mount: later reads fail at once, with no new fetch and no re-hash.  A
missing object is remembered for ``missing_retry_s`` only, because it may still
appear (a mirror catching up); the first request after that fetches it again.
:class:`GuardedReader` puts that check in front of every object the FUSE client
fetches (trees, blob manifests, chunks), and the prefetch threads use it too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from casstore.errors import CasError, ObjectCorrupt, ObjectMissing
from casstore.objects import ObjectId, ObjType
from casstore.reader import TreeReader
from casstore.remote import ObjectSource, fetch
from casstore.trees import Entry, Kind, Storage

log = logging.getLogger("casstore.cache")
MISSING_RETRY_S = 10.0


class KnownBadCorrupt(ObjectCorrupt):
    """A read touched an object already known to be corrupt (not fetched again)."""


class KnownBadMissing(ObjectMissing):
    """A read touched an object found missing less than the back-off ago."""


class KnownBad:
    """Objects that failed: corrupt ones for good, missing ones for a back-off.

    Thread-safe: the FUSE thread and the prefetch threads share one instance.
    """

    def __init__(self, missing_retry_s: float = MISSING_RETRY_S,
                 clock=time.monotonic) -> None:
        self.missing_retry_s = missing_retry_s
        self.clock = clock
        self.corrupt: dict[ObjectId, str] = {}
        self.missing: dict[ObjectId, tuple[float, str]] = {}  # retry-after time, message
        self.fast_failures = 0
        self._lock = threading.Lock()

    def check(self, oid: ObjectId) -> None:
        """Raise at once if ``oid`` is known bad (cheap when nothing has failed)."""
        if not (self.corrupt or self.missing):
            return
        with self._lock:
            msg = self.corrupt.get(oid)
            if msg is not None:
                self.fast_failures += 1
                raise KnownBadCorrupt(f"{msg} (known bad since an earlier read; not re-fetched)")
            until = self.missing.get(oid)
            if until is not None:
                if self.clock() < until[0]:
                    self.fast_failures += 1
                    raise KnownBadMissing(f"{until[1]} (known missing; retried after "
                                          f"{self.missing_retry_s:g} s)")
                del self.missing[oid]  # back-off over: the caller fetches again

    def guard(self, oid: ObjectId, fn, *args):
        """``fn(*args)`` (which fetches ``oid`` only), remembering ``oid`` if it fails."""
        self.check(oid)
        try:
            return fn(*args)
        except (KnownBadCorrupt, KnownBadMissing):
            raise
        except ObjectCorrupt as exc:  # incl. FormatError: the bytes will not change
            with self._lock:
                self.corrupt[oid] = str(exc)
            raise
        except ObjectMissing as exc:
            with self._lock:
                self.missing[oid] = (self.clock() + self.missing_retry_s, str(exc))
            raise

    def fetch(self, source: ObjectSource, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        return self.guard(oid, fetch, source, oid, expect)

    def summary(self, limit: int = 20) -> dict:
        with self._lock:
            return {"corrupt": [str(o) for o in list(self.corrupt)[:limit]],
                    "missing": [str(o) for o in list(self.missing)[:limit]],
                    "n_corrupt": len(self.corrupt), "n_missing": len(self.missing),
                    "fast_failures": self.fast_failures}


class GuardedReader(TreeReader):
    """A TreeReader whose object fetches go through a :class:`KnownBad` memory.

    ``dir``, ``blob`` and ``chunk`` each fetch exactly the object they are given,
    so wrapping them remembers exactly the object that failed.
    """

    def __init__(self, source: ObjectSource, bad: KnownBad | None = None, **kw) -> None:
        super().__init__(source, **kw)
        self.bad = bad if bad is not None else KnownBad()

    def dir(self, oid: ObjectId):
        hit = self.trees.get(oid)  # cached objects were verified: no check needed
        if hit is not None:
            return hit  # type: ignore[return-value]
        return self.bad.guard(oid, super().dir, oid)

    def blob(self, oid: ObjectId):
        hit = self.blobs.get(oid)  # cached objects were verified: no check needed
        if hit is not None:
            return hit  # type: ignore[return-value]
        return self.bad.guard(oid, super().blob, oid)

    def chunk(self, oid: ObjectId) -> bytes:
        hit = self.chunks.get(oid)  # cached objects were verified: no check needed
        if hit is not None:
            return hit  # type: ignore[return-value]
        return self.bad.guard(oid, super().chunk, oid)


@dataclass
class _Copy:
    """One file's copy in the cache folder and which of its chunks are verified."""

    path: Path
    size: int
    oids: list[ObjectId]
    starts: list[int]
    fd: int
    have: list[bool]
    done: bool = False
    cursor: int = 0  # the chunk the prefetch thread works on next
    last_use: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def span(self, i: int) -> tuple[int, int]:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return self.starts[i], end

    def chunks_for(self, offset: int, end: int) -> range:
        import bisect

        return range(bisect.bisect_right(self.starts, offset) - 1,
                     bisect.bisect_left(self.starts, end))


AHEAD_CHUNKS = 4  # reads this many chunks past the prefetch cursor do not wait


class FileCache:
    """Whole-file prefetch into a bounded cache folder; see the module docstring."""

    def __init__(self, reader: TreeReader, folder: Path, max_bytes: int,
                 prefetch_min: int = 4 << 20, wait_s: float = 10.0) -> None:
        self.reader = reader
        self.folder = Path(folder) / "files"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.prefetch_min = prefetch_min
        self.wait_s = wait_s
        self.copies: dict[ObjectId, _Copy] = {}
        self.closed = False
        self.stats = {"prefetches": 0, "hits": 0, "fallbacks": 0, "chunk_errors": 0,
                      "evictions": 0}

    # -- policy ------------------------------------------------------------------
    def wants(self, entry: Entry) -> bool:
        """Large stored files are served from whole-file copies."""
        return (entry.kind == Kind.FILE and entry.storage in (Storage.CHUNK, Storage.BLOB)
                and entry.oid is not None and self.prefetch_min <= entry.size <= self.max_bytes)

    def used_bytes(self) -> int:
        return sum(c.size for c in self.copies.values())

    # -- reads -------------------------------------------------------------------
    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes of a large file: from its verified copy, else straight from the reader."""
        end = min(entry.size, offset + size)
        if offset >= end:
            return b""
        assert entry.oid is not None
        copy = self.copies.get(entry.oid)
        if copy is None:
            try:
                copy = self._start(entry)
            except OSError as exc:  # cache folder unusable: serve from the store
                log.warning("cannot cache %s: %s", entry.oid, exc)
                self.stats["fallbacks"] += 1
                return self.reader.read(entry, offset, size)
        copy.last_use = time.monotonic()
        need = copy.chunks_for(offset, end)
        if self._wait(copy, need):
            self.stats["hits"] += 1
            return os.pread(copy.fd, end - offset, offset)
        self.stats["fallbacks"] += 1
        return self.reader.read(entry, offset, size)

    def _wait(self, copy: _Copy, need: range) -> bool:
        """Wait (bounded) until the chunks are verified or the prefetch has finished.

        The FUSE loop is single-threaded, so a read far ahead of the prefetch
        cursor is served directly at once instead of stalling every other request.
        """
        deadline = time.monotonic() + self.wait_s
        with copy.cond:
            if need and not copy.have[need.start] and need.start > copy.cursor + AHEAD_CHUNKS:
                return False
            while not all(copy.have[i] for i in need):
                left = deadline - time.monotonic()
                if copy.done or left <= 0:
                    return False
                copy.cond.wait(left)
        return True

    # -- prefetch ----------------------------------------------------------------
    def _start(self, entry: Entry) -> _Copy:
        assert entry.oid is not None
        oids = self.reader.file_chunk_ids(entry)
        if entry.storage == Storage.BLOB:
            starts = self.reader.blob(entry.oid).starts
        else:
            starts = [0]
        self._make_room(entry.size)
        path = self.folder / entry.oid.hex
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        copy = _Copy(path, entry.size, oids, list(starts), fd, [False] * len(oids))
        self.copies[entry.oid] = copy
        self.stats["prefetches"] += 1
        copy.thread = threading.Thread(target=self._fill, args=(copy,), daemon=True,
                                       name=f"prefetch-{entry.oid.hex[:8]}")
        copy.thread.start()
        return copy

    def _fill(self, copy: _Copy) -> None:
        """Verify or fetch every chunk in order; a bad chunk is skipped, not fatal."""
        # Signals belong to the thread that runs the FUSE loop, never to a worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            for i, oid in enumerate(copy.oids):
                if self.closed:
                    return
                copy.cursor = i
                try:
                    self._fill_one(copy, i, oid)
                except CasError as exc:
                    self.stats["chunk_errors"] += 1
                    log.warning("prefetch skipped a chunk: %s", exc)
                    continue
                with copy.cond:
                    copy.have[i] = True
                    copy.cond.notify_all()
            os.ftruncate(copy.fd, copy.size)
        except Exception:  # noqa: BLE001 - a thread must not die silently
            if not self.closed:  # at unmount the fd may close under us: expected
                log.exception("prefetch of %s failed", copy.path.name)
        finally:
            with copy.cond:
                copy.done = True
                copy.cond.notify_all()

    def _fill_one(self, copy: _Copy, i: int, oid: ObjectId) -> None:
        lo, hi = copy.span(i)
        old = os.pread(copy.fd, hi - lo, lo)
        if len(old) == hi - lo and blake3.blake3(old).digest() == oid.digest:
            return  # left by an earlier mount, and still correct
        bad = getattr(self.reader, "bad", None)
        if bad is not None:
            data = bad.fetch(self.reader.source, oid, ObjType.CHUNK)
        else:
            data = fetch(self.reader.source, oid, ObjType.CHUNK)
        if len(data) != hi - lo:
            from casstore.errors import FormatError

            raise FormatError(f"chunk {oid} has {len(data)} bytes, manifest says {hi - lo}")
        os.pwrite(copy.fd, data, lo)

    # -- bounds ------------------------------------------------------------------
    def _make_room(self, size: int) -> None:
        """Delete least recently used finished copies (and stray files) until ``size`` fits."""
        on_disk = self._disk_files()
        total = sum(on_disk.values())
        victims = sorted((c.last_use, oid) for oid, c in self.copies.items() if c.done)
        tracked = {oid.hex for oid in self.copies}
        strays = [name for name in on_disk if name not in tracked]
        for name in strays:
            if total + size <= self.max_bytes:
                return
            total -= on_disk[name]
            (self.folder / name).unlink(missing_ok=True)
        for _t, oid in victims:
            if total + size <= self.max_bytes:
                return
            copy = self.copies.pop(oid)
            os.close(copy.fd)
            copy.path.unlink(missing_ok=True)
            total -= on_disk.get(oid.hex, 0)
            self.stats["evictions"] += 1

    def _disk_files(self) -> dict[str, int]:
        out = {}
        with os.scandir(self.folder) as it:
            for d in it:
                try:
                    out[d.name] = d.stat().st_blocks * 512
                except FileNotFoundError:
                    continue
        return out

    def close(self) -> None:
        """Stop the prefetch threads, then close their files (never under a writer)."""
        self.closed = True
        for copy in self.copies.values():
            if copy.thread is not None:
                copy.thread.join(timeout=10)
            if copy.thread is None or not copy.thread.is_alive():
                os.close(copy.fd)
        self.copies.clear()

    def summary(self) -> dict:
        return {"dir": str(self.folder), "files": len(self.copies), "bytes": self.used_bytes(),
                "max_bytes": self.max_bytes, **self.stats}
