"""The server's tarball cache: made once from a store tree, checked, then reused.

A tarball is written to a temporary file in the cache folder while its git tree
hash is computed from the same bytes (:func:`casstore.pkg.tarball.write_tarball`).
Only when that hash equals the one the client asked for is the file renamed into
place, under a name made of our own values only (store tree id, git hash and the
BLAKE3 of the tarball bytes), never of request text.  Before a cached file is
served its BLAKE3 is checked once per file state (inode, size, mtime, ctime), so a
file altered in the cache is dropped and rebuilt instead of served.  The folder is
bounded in size; the least recently used files go first, never one being served.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import blake3

from casstore.errors import TreeHashMismatch
from casstore.format.objects import ObjectId
from casstore.pkg.tarball import write_tarball
from casstore.view.reader import TreeReader

log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{40})-([0-9a-f]{64})\.tar\.gz$")
Key = tuple[str, str]  # (store tree hex, git tree sha1)


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
    """Thread-safe; builds run in the caller's thread (the server uses a pool)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lru: OrderedDict[Key, Cached] = OrderedDict()
        self._verified: dict[Path, tuple] = {}
        self._pinned: dict[Key, int] = {}
        self.builds = 0
        self._scan()

    def _scan(self) -> None:
        files = []
        for name in os.listdir(self.folder):
            path = self.folder / name
            if name.startswith("tmp-"):
                path.unlink(missing_ok=True)  # a build that died half way
                continue
            m = _NAME_RE.match(name)
            if m:
                st = path.stat()
                files.append((st.st_mtime_ns, (m.group(1), m.group(2)),
                              Cached(path, st.st_size, m.group(3))))
        for _t, key, c in sorted(files, key=lambda x: x[0]):
            self._lru[key] = c

    @property
    def total(self) -> int:
        return sum(c.size for c in self._lru.values())

    def get(self, reader: TreeReader, tree: ObjectId, sha1: str, *, check: bool = True) -> Cached:
        """A verified cached tarball of ``tree``, building it when needed."""
        key = (tree.hex, sha1)
        with self._lock:
            c = self._lru.get(key)
            if c is not None:
                self._lru.move_to_end(key)
        if c is not None:
            if self._intact(c):
                return c
            log.error("cached tarball %s was altered on disk; rebuilding it from the store",
                      c.path.name)
            self._drop(key)
        return self._build(reader, tree, sha1, check)

    def _intact(self, c: Cached) -> bool:
        try:
            with open(c.path, "rb") as f:
                st = os.fstat(f.fileno())
                state = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if self._verified.get(c.path) == state:
                    return True
                h = blake3.blake3()
                while block := f.read(1 << 20):
                    h.update(block)
        except FileNotFoundError:
            return False
        if st.st_size != c.size or h.hexdigest() != c.b3:
            return False
        self._verified[c.path] = state
        return True

    def _build(self, reader: TreeReader, tree: ObjectId, sha1: str, check: bool) -> Cached:
        tmp = self.folder / f"tmp-{os.getpid()}-{threading.get_ident()}-{tree.hex[:16]}"
        try:
            with open(tmp, "wb") as f:
                w = _HashingWriter(f)
                got = write_tarball(reader, tree, w)  # type: ignore[arg-type]
            if got != sha1:
                if check:
                    raise TreeHashMismatch(f"store tree {tree} has git tree hash {got}, "
                                           f"not the requested {sha1}")
                log.warning("serving tree %s as %s although it hashes to %s (check disabled)",
                            tree, sha1, got)
            b3 = w.h.hexdigest()
            final = self.folder / f"{tree.hex}-{sha1}-{b3}.tar.gz"
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        c = Cached(final, w.n, b3)
        st = final.stat()
        with self._lock:
            self.builds += 1
            self._verified[final] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            self._lru[(tree.hex, sha1)] = c
            self._evict()
        return c

    def pin(self, c: Cached) -> Key:
        key = self._key_of(c)
        with self._lock:
            self._pinned[key] = self._pinned.get(key, 0) + 1
        return key

    def unpin(self, key: Key) -> None:
        with self._lock:
            n = self._pinned.get(key, 0) - 1
            if n > 0:
                self._pinned[key] = n
            else:
                self._pinned.pop(key, None)

    def _key_of(self, c: Cached) -> Key:
        m = _NAME_RE.match(c.path.name)
        assert m is not None
        return (m.group(1), m.group(2))

    def _evict(self) -> None:
        """Drop least recently used files until under the bound (lock held).

        Files being served and the newest file (about to be served) stay, so the
        folder may exceed the bound for as long as they are in use.
        """
        total = self.total
        for key in list(self._lru)[:-1]:
            if total <= self.max_bytes:
                break
            if key in self._pinned:
                continue
            c = self._lru.pop(key)
            self._verified.pop(c.path, None)
            c.path.unlink(missing_ok=True)
            total -= c.size

    def _drop(self, key: Key) -> None:
        with self._lock:
            c = self._lru.pop(key, None)
            if c is not None:
                self._verified.pop(c.path, None)
                c.path.unlink(missing_ok=True)
