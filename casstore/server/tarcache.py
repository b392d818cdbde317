"""The server's tarball cache: made once from a store tree, checked, then reused.

A tarball is written to a temporary file in the cache folder while its git tree
hash is computed from the same bytes (:func:`casstore.pkg.tarball.write_tarball`).
Only when that hash equals the one the client asked for is the file renamed into
place, under a name made of our own values only (store tree id, git hash and the
BLAKE3 of the tarball bytes), never of request text.  Before a cached file is
served its BLAKE3 is checked once per file state (inode, size, mtime, ctime), so a
file altered in the cache is dropped and rebuilt instead of served.  The folder is
bounded in size; the least recently used files go first.

The folder is treated as hostile, like the client cache: a cached file is opened
``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file owned by us, so a symlink or
FIFO planted at a cached name is dropped and rebuilt, never followed or waited on;
temporary files have unguessable names made with ``O_EXCL``.  Serving uses the
descriptor opened for the check, so a file evicted meanwhile is still sent whole.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from casstore.errors import CasError, ObjectCorrupt, TreeHashMismatch
from casstore.fileio.safeio import MISSING, OPEN_FLAGS, check_stat, os_error
from casstore.format.objects import ObjectId
from casstore.pkg.tarball import write_tarball
from casstore.view.reader import TreeReader

log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{40})-([0-9a-f]{64})\.tar\.gz$")
Key = tuple[str, str]  # (store tree hex, git tree sha1)
MAX_TARBALL = 64 << 30  # a sanity bound on a cached file, far above any package
# ("hit" | "build" | "evict" | "altered", bytes), ("build_seconds", s), ("total", bytes)
Event = Callable[[str, float], None]


@dataclass
class Cached:
    path: Path
    size: int
    b3: str


class _HashingWriter:
    """A write-only file that also hashes (BLAKE3) and counts what goes through."""

    def __init__(self, f) -> None:
        self.f, self.h, self.n = f, blake3.blake3(), 0

    def write(self, data) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class TarballCache:
    """Thread-safe; builds run in the caller's thread (the server uses a pool).

    ``event`` (if given) is told of every hit, build, eviction and altered file, with
    the file's size, of each build's duration and of the folder's total after a build,
    for the server's metrics.
    """

    def __init__(self, folder: Path, max_bytes: int, event: Event | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.event = event or (lambda _kind, _n: None)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._uid = os.geteuid()
        self._lock = threading.Lock()
        self._lru: OrderedDict[Key, Cached] = OrderedDict()
        self._verified: dict[Path, tuple] = {}
        self.builds = 0
        self._scan()

    def _scan(self) -> None:
        files = []
        for name in os.listdir(self.folder):
            path = self.folder / name
            if name.startswith("tmp-"):
                if _abandoned(path):
                    path.unlink(missing_ok=True)  # a build that died half way
                continue
            m = _NAME_RE.match(name)
            if not m:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_uid == self._uid:
                files.append((st.st_mtime_ns, (m.group(1), m.group(2)),
                              Cached(path, st.st_size, m.group(3))))
        for _t, key, c in sorted(files, key=lambda x: x[0]):
            self._lru[key] = c

    @property
    def total(self) -> int:
        return sum(c.size for c in self._lru.values())

    def _open(self, c: Cached) -> tuple[int, os.stat_result] | None:
        """(fd, fstat) of a cached file if it is a regular file of ours, else None."""
        try:
            fd = os.open(c.path, OPEN_FLAGS)
        except OSError as exc:
            if exc.errno not in MISSING:
                log.error("%s", os_error(exc, f"cached tarball {c.path.name}", ObjectCorrupt))
            return None
        try:
            st = os.fstat(fd)
            check_stat(st, MAX_TARBALL, f"cached tarball {c.path.name}", ObjectCorrupt,
                       self._uid)
        except CasError as exc:
            os.close(fd)
            log.error("%s", exc)
            return None
        return fd, st

    def open_verified(self, key: Key, count: bool = True) -> tuple[int, os.stat_result] | None:
        """An open descriptor of the cached tarball of ``key`` when it is known intact
        (checked before, unchanged since): no hashing, safe to call from the event loop.
        None when it must be built or checked first (:meth:`get`).  ``count``: report
        a hit (not when :meth:`get` just reported the build or hit)."""
        with self._lock:
            c = self._lru.get(key)
            if c is not None:
                self._lru.move_to_end(key)
        if c is None:
            return None
        opened = self._open(c)
        if opened is None:
            return None
        fd, st = opened
        if self._verified.get(c.path) == _state(st) and st.st_size == c.size:
            if count:
                self.event("hit", st.st_size)
            return fd, st
        os.close(fd)
        return None

    def get(self, reader: TreeReader, tree: ObjectId, sha1: str, *, check: bool = True) -> Cached:
        """A verified cached tarball of ``tree``, building it when needed (blocking)."""
        key = (tree.hex, sha1)
        with self._lock:
            c = self._lru.get(key)
            if c is not None:
                self._lru.move_to_end(key)
        if c is not None:
            if self._intact(c):
                self.event("hit", c.size)
                return c
            if not os.path.lexists(c.path):  # evicted by another worker sharing the folder
                self._drop(key)
                return self._build(reader, tree, sha1, check)
            log.error("cached tarball %s was altered on disk; rebuilding it from the store",
                      c.path.name)
            self.event("altered", c.size)
            self._drop(key)
        return self._build(reader, tree, sha1, check)

    def _intact(self, c: Cached) -> bool:
        opened = self._open(c)
        if opened is None:
            return False
        fd, st = opened
        try:
            if self._verified.get(c.path) == _state(st):
                return True
            h = blake3.blake3()
            while block := os.read(fd, 1 << 20):
                h.update(block)
        finally:
            os.close(fd)
        if st.st_size != c.size or h.hexdigest() != c.b3:
            return False
        self._verified[c.path] = _state(st)
        return True

    def _build(self, reader: TreeReader, tree: ObjectId, sha1: str, check: bool) -> Cached:
        started = time.monotonic()
        fd, name = tempfile.mkstemp(prefix=f"tmp-{os.getpid()}-{tree.hex[:16]}-",
                                    dir=self.folder)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                w = _HashingWriter(f)
                got = write_tarball(reader, tree, w)  # type: ignore[arg-type]
                os.fchmod(f.fileno(), 0o644)
            if got != sha1:
                if check:
                    raise TreeHashMismatch(f"store tree {tree} has git tree hash {got}, "
                                           f"not the requested {sha1}")
                log.warning("serving tree %s as %s although it hashes to %s (check disabled)",
                            tree, sha1, got)
            b3 = w.h.hexdigest()
            final = self.folder / f"{tree.hex}-{sha1}-{b3}.tar.gz"
            os.replace(tmp, final)  # replaces whatever was planted there, FIFO included
        finally:
            tmp.unlink(missing_ok=True)
        c = Cached(final, w.n, b3)
        st = os.lstat(final)
        with self._lock:
            self.builds += 1
            self._verified[final] = _state(st)
            self._lru[(tree.hex, sha1)] = c
            self._evict()
            total = self.total
        self.event("build", c.size)
        self.event("build_seconds", time.monotonic() - started)
        self.event("total", total)
        return c

    def _evict(self) -> None:
        """Drop least recently used files until under the bound (lock held).

        The newest file (about to be served) stays.  A file being sent is sent whole
        all the same: the sender holds it open.
        """
        total = self.total
        for key in list(self._lru)[:-1]:
            if total <= self.max_bytes:
                break
            c = self._lru.pop(key)
            self._verified.pop(c.path, None)
            c.path.unlink(missing_ok=True)
            total -= c.size
            self.event("evict", c.size)

    def _drop(self, key: Key) -> None:
        with self._lock:
            c = self._lru.pop(key, None)
            if c is not None:
                self._verified.pop(c.path, None)
                c.path.unlink(missing_ok=True)


def _abandoned(path: Path) -> bool:
    """A temporary file no build will finish: its process is gone, or it is older
    than an hour.  Other workers share the folder and may be building right now."""
    m = re.match(r"^tmp-([0-9]+)-", path.name)
    try:
        if time.time() - os.lstat(path).st_mtime > 3600:
            return True
        if m is None:
            return False
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def _state(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
