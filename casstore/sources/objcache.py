"""An on-disk, verified object cache in front of another source (as CVMFS's cache).

``ObjectCache(inner, folder, max_bytes)`` is itself an :class:`ObjectSource`.  It
keeps the *stored* bytes of objects it fetched from ``inner`` as one file per
object, named by the id's hex, directly in ``folder``:

* **Verified on every read.**  A cached file is decoded against its id each time
  it is read; one that fails (bit rot, an edit, a torn write after a crash) is
  dropped and fetched again from ``inner``.  Bytes that fail their hash are never
  written to the cache.
* **Byte quota, LRU.**  A hit stamps the file's mtime (``futimens`` on the open
  file); when the cache grows past ``max_bytes`` the oldest files are deleted down
  to ``low_water`` of the quota.  The folder is the only state, so the cache
  survives restarts and can be shared by several processes on a node: each
  process keeps an estimate of the total and rescans the folder when its own
  additions pass a twentieth of the quota, so the overshoot stays small without
  shared memory.
* **Merged fetches.**  Concurrent requests for one object inside a process wait
  for a single inner fetch (CVMFS's fetcher does the same).
* **Hardened**: the folder is created
  0700 and refused if it is not owned by this user or is writable by group or
  others.  All access goes through a directory fd; cached files are opened with
  ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` and must be regular files owned by this
  user, of a plausible size; new files are written to an ``O_EXCL`` temporary
  name and renamed into place, so nothing is ever written through a symlink.

Refs, the format document and releases are mutable: they are passed through to
``inner`` uncached.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import CasError, FormatError, ObjectCorrupt, UnsafeFolder, UsageError
from casstore.fileio.fsutil import private_dir_problem
from casstore.fileio.safeio import OPEN_FLAGS, read_fd
from casstore.format.layout import MAX_STORED_SIZE
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, decode
from casstore.sources.base import ObjectSource, SourceWrapper

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TMP_MAX_AGE_S = 3600.0  # a temporary file this old belongs to a dead process
_HEX = frozenset("0123456789abcdef")


def _is_object_name(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


def open_cache_dir(folder: Path, uid: int) -> int:
    """Create ``folder`` 0700 if needed and return an fd on it, refusing an unsafe one."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        # O_NOFOLLOW: a symlink planted here (to a folder of ours elsewhere) is refused,
        # or objects would be written wherever it points.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFolder(f"refusing cache folder {folder}: it is not a directory "
                              "(a symlink or a file?)") from None
        raise UnsafeFolder(f"cannot use cache folder {folder}: {exc.strerror or exc}") from None
    problem = private_dir_problem(os.fstat(fd), uid)
    if problem:
        os.close(fd)
        raise UnsafeFolder(f"refusing cache folder {folder}: it {problem}")
    return fd


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception like ``exc`` for a waiting thread (one object per raise)."""
    try:
        return type(exc)(*exc.args)
    except Exception:
        return exc


@dataclass
class _Flight:
    """One inner fetch that other threads wait for."""

    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[ObjType, bytes, bytes] | None = None
    error: BaseException | None = None


@dataclass
class PrefetchResult:
    """What :meth:`ObjectCache.prefetch` did."""

    fetched: int = 0
    cached: int = 0
    failed: dict[ObjectId, BaseException] = field(default_factory=dict)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    inner_fetches: int = 0
    dropped: int = 0
    evicted: int = 0
    stored: int = 0


class ObjectCache(SourceWrapper):
    """An :class:`ObjectSource` that caches ``inner``'s objects on disk, verified."""

    def __init__(self, inner: ObjectSource, folder: Path, max_bytes: int, *,
                 low_water: float = 0.9) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
            raise UsageError(f"object cache size must be a positive number of bytes, "
                             f"not {max_bytes!r}")
        self.inner = inner
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.low_water = low_water
        self.uid = os.geteuid()
        self.stats = CacheStats()
        self._dir_fd: int | None = open_cache_dir(self.folder, self.uid)
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._inflight: dict[ObjectId, _Flight] = {}
        self._last_ns = 0
        self._total = 0  # this process's estimate of the folder's bytes
        self._added = 0  # bytes added since the last scan
        self.rescan()

    def __repr__(self) -> str:
        return f"ObjectCache({self.inner!r}, {str(self.folder)!r}, {self.max_bytes})"

    @property
    def _fd(self) -> int:
        if self._dir_fd is None:
            raise UsageError("object cache is closed")
        return self._dir_fd

    # -- the ObjectSource interface ------------------------------------------------
    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        kind, raw, _stored = self._get(oid, expect)
        # as objects.decode: any verified object serves a chunk reference (FORMAT §3.3)
        if expect is not None and expect != ObjType.CHUNK and kind != expect:
            raise FormatError(f"object {oid} is a {kind.name.lower()}, "
                              f"expected a {expect.name.lower()}")
        return raw

    def read_stored(self, oid: ObjectId) -> bytes:
        return self._get(oid, None)[2]

    def read_head(self, oid: ObjectId) -> bytes:
        """From the verified object (fetched and cached whole: it is about to be read)."""
        return self.read_stored(oid)[:HEADER_SIZE]

    def stored_size(self, oid: ObjectId) -> int | None:
        try:
            st = os.stat(oid.hex, dir_fd=self._fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == self.uid:
                return st.st_size
        except OSError:
            pass
        return self.inner.stored_size(oid)

    def close(self) -> None:
        with self._lock:
            fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)
        self.inner.close()

    # -- reading -----------------------------------------------------------------
    def _get(self, oid: ObjectId, expect: ObjType | None) -> tuple[ObjType, bytes, bytes]:
        """(type, raw, stored), verified; from the cache when it holds a good copy."""
        hit = self._cached(oid, expect)
        if hit is not None:
            with self._lock:
                self.stats.hits += 1
            return hit
        with self._lock:
            self.stats.misses += 1
        return self._fill(oid, expect)

    def _cached(self, oid: ObjectId, expect: ObjType | None) -> tuple[ObjType, bytes, bytes] | None:
        stored = self._read_file(oid.hex)
        if stored is None:
            return None
        try:
            kind, raw = decode(oid, stored)
        except ObjectCorrupt as exc:
            self._drop(oid.hex, f"cached object failed verification: {exc}")
            return None
        if expect is not None and kind != expect:
            # The header is not covered by the hash: let the source decide.
            self._drop(oid.hex, f"cached object {oid} has type {kind.name.lower()}")
            return None
        return kind, raw, stored

    def _read_file(self, name: str) -> bytes | None:
        """A cached file's bytes (stamping it as recently used), or None; anything that
        is not our own plausible regular file is dropped, never followed or read."""
        try:
            fd = os.open(name, OPEN_FLAGS, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a planted symlink (ELOOP), socket, unreadable file
            self._drop(name, f"cannot open cached file: {exc.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid
                    or not HEADER_SIZE <= st.st_size <= MAX_STORED_SIZE):
                self._drop(name, "not a plausible cached object (type, owner or size)")
                return None
            data = read_fd(fd, st.st_size)
            t = self._now_ns()
            os.utime(fd, ns=(t, t))
            return data
        except OSError as exc:
            self._drop(name, f"cannot read cached file: {exc.strerror}")
            return None
        finally:
            os.close(fd)

    def _fill(self, oid: ObjectId, expect: ObjType | None) -> tuple[ObjType, bytes, bytes]:
        """Fetch from ``inner`` once, however many threads ask at the same time."""
        with self._lock:
            flight = self._inflight.get(oid)
            leader = flight is None
            if leader:
                flight = self._inflight[oid] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise _copy(flight.error)
            assert flight.result is not None
            return flight.result
        try:
            # Another thread may have filled the cache just before we became leader.
            result = self._cached(oid, expect) or self._from_inner(oid)
            flight.result = result
            return result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._inflight[oid]
            flight.done.set()

    def _from_inner(self, oid: ObjectId) -> tuple[ObjType, bytes, bytes]:
        with self._lock:
            self.stats.inner_fetches += 1
        decoded = getattr(self.inner, "read_decoded", None)
        if decoded is not None:  # the HTTP source verifies (to fail over): no second pass
            kind, raw, stored = decoded(oid)
        else:
            stored = self.inner.read_stored(oid)
            kind, raw = decode(oid, stored)  # never cache (or return) bytes that fail
        self._store(oid.hex, stored)
        return kind, raw, stored

    # -- prefetch ------------------------------------------------------------------
    def prefetch(self, oids: list[ObjectId], *, batch: int = 32) -> PrefetchResult:
        """Bring ``oids`` into the cache, many at a time when the inner source can
        (``read_decoded_many``, the HTTP source), else one by one.  Objects already
        cached are only checked for presence; failures are counted, not raised (the
        read that needs the object will meet the error itself)."""
        out = PrefetchResult()
        todo = []
        for oid in dict.fromkeys(oids):
            if self._present(oid.hex):
                out.cached += 1
            else:
                todo.append(oid)
        many = getattr(self.inner, "read_decoded_many", None)
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            if many is not None:
                got = many(part)
            else:
                got = {}
                for oid in part:
                    try:
                        got[oid] = self._get(oid, None)
                    except CasError as exc:
                        got[oid] = exc
            for oid, res in got.items():
                if isinstance(res, BaseException):
                    out.failed[oid] = res
                    continue
                if many is not None:
                    self._store(oid.hex, res[2])
                out.fetched += 1
        return out

    def _present(self, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_uid == self.uid

    # -- writing and eviction ------------------------------------------------------
    def _store(self, name: str, stored: bytes) -> None:
        """Write a verified object: O_EXCL temporary file, then rename (best effort)."""
        size = len(stored)
        if size > self.max_bytes:
            return
        tmp = f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=self._fd)
            try:
                view = memoryview(stored)
                while view:
                    view = view[os.write(fd, view):]
                t = self._now_ns()
                os.utime(fd, ns=(t, t))
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        except OSError as exc:  # full disk, a folder planted at the name: just do not cache
            log.warning("object cache %s: cannot store %s: %s", self.folder, name,
                        exc.strerror or exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._fd)
            return
        with self._lock:
            self.stats.stored += 1
            self._total += size
            self._added += size
            full = self._total > self.max_bytes or self._added > self.max_bytes // 20
        if full:
            self.rescan()

    def _drop(self, name: str, why: str) -> None:
        log.warning("object cache %s: dropping %s: %s", self.folder, name, why)
        with self._lock:
            self.stats.dropped += 1
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._fd)

    def _now_ns(self) -> int:
        """Strictly increasing within the process, so LRU order is exact."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return self._last_ns

    def used_bytes_estimate(self) -> int:
        """This process's running estimate of the folder's bytes (no scan: cheap
        enough for the metrics every few seconds; :meth:`usage` counts)."""
        return self._total

    def usage(self) -> int:
        """Bytes of cached objects in the folder right now (a scan)."""
        with self._evict_lock:
            return sum(size for _t, _n, size in self._scan())

    def _scan(self) -> list[tuple[int, str, int]]:
        """(mtime_ns, name, size) of every cached object; stale temp files removed.

        Called with ``_evict_lock`` held: scandir on the shared directory fd uses
        its file offset, so two scans at once would disturb each other.
        """
        out = []
        old = time.time() - TMP_MAX_AGE_S
        with os.scandir(self._fd) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.name.startswith(TMP_PREFIX):
                    if st.st_mtime < old:
                        with contextlib.suppress(OSError):
                            os.unlink(e.name, dir_fd=self._fd)
                    continue
                if _is_object_name(e.name) and stat.S_ISREG(st.st_mode):
                    out.append((st.st_mtime_ns, e.name, st.st_size))
        return out

    def rescan(self) -> None:
        """Recount the folder (other processes add to it too) and evict the least
        recently used objects if it is over quota, down to ``low_water`` of it."""
        if not self._evict_lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            entries = self._scan()
            total = sum(size for _t, _n, size in entries)
            if total > self.max_bytes:
                target = int(self.max_bytes * self.low_water)
                for _t, name, size in sorted(entries):
                    if total <= target:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=self._fd)
                    total -= size
                    with self._lock:
                        self.stats.evicted += 1
            with self._lock:
                self._total = total
                self._added = 0
        finally:
            self._evict_lock.release()
