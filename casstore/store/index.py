"""The embedded LMDB index: which objects exist, their type and sizes, and the refs.

The index is the store's has/size lookup (puts, and later HTTP HEAD and push, ask
it instead of touching object files), but it stays a *cache*: the object and ref
files are the truth, and ``cas fsck --rebuild-index`` recreates it from them alone,
even when the LMDB file itself is garbage.  LMDB gives multi-process readers and
serialised writers, which lets several ``cas put`` processes share one store, and
keeps memory flat however large the store grows (restic's in-memory index is the
counter-example).

Each object entry also carries a *verified marker*: the object file's ctime (ns)
when this store last wrote it, fully verified it, or refreshed its mtime.  A put
that meets the object again trusts the file without reading it only while its
ctime is unchanged; any write to the file (a flipped byte, a swapped file) moves
the ctime, so the next put re-verifies and repairs it (docs/FORMAT.md §3.3, §8).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

from casstore.errors import IndexDamaged, StoreError
from casstore.format.objects import ID_BYTES, ObjectId, ObjType

_ENTRY = struct.Struct("<BQQq")  # type, raw size, stored size, verified ctime_ns (0: never)
_OLD_ENTRY = struct.Struct("<BQQ")  # entries written before the marker existed
MAP_SIZE = 1 << 40  # sparse; LMDB only uses what it writes
# LMDB's meta pages (pages 0 and 1): a 16-byte page header (pgno, pad, flags, ...), then
# magic, version, address, map size, the free and main db records (48 bytes each; the
# free db's first field holds the page size), the last page number and the txn id.
_META_MAGIC = 0xBEEFC0DE
_META_FLAG = 0x08
_META = struct.Struct("<Q2xH4xIIQQI44x48xQQ")
_REBUILD = "run 'cas fsck --rebuild-index' to rebuild it from the objects"


@dataclass(frozen=True)
class IndexEntry:
    """What the index knows about one object.

    ``verified_ctime`` is the file's ctime_ns when it was last written or checked
    by this store; 0 means "never checked here" (the file must be verified before
    a put reuses it).
    """

    kind: ObjType
    raw_size: int
    stored_size: int
    verified_ctime: int = 0


def _unpack(key: bytes, val: bytes) -> tuple[ObjectId, IndexEntry]:
    if len(key) != ID_BYTES:
        raise IndexDamaged("the index holds a malformed key; run 'cas fsck --rebuild-index'")
    try:
        if len(val) == _OLD_ENTRY.size:
            kind, raw, stored = _OLD_ENTRY.unpack(val)
            ctime = 0
        else:
            kind, raw, stored, ctime = _ENTRY.unpack(val)
        return ObjectId(bytes(key)), IndexEntry(ObjType(kind), raw, stored, ctime)
    except (struct.error, ValueError):
        raise IndexDamaged(f"the index entry of {ObjectId(bytes(key))} is malformed; "
                           "run 'cas fsck --rebuild-index'") from None


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Turn any LMDB failure into one clear error that says how to recover."""
    try:
        yield
    except lmdb.Error as exc:
        raise IndexDamaged(f"the index at {path} is damaged ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:80]}); run 'cas fsck "
                           "--rebuild-index' to rebuild it from the objects") from None


def check_files(path: Path) -> None:
    """Refuse an index LMDB must not map (IndexDamaged, naming ``--rebuild-index``).

    LMDB maps ``data.mdb`` and trusts its meta pages: a truncated file kills the
    process with SIGBUS when a page past its end is touched, and a FIFO in its place
    hangs the open.  So before LMDB sees it, the file must be a regular file (opened
    with O_NOFOLLOW | O_NONBLOCK), hold two meta pages with LMDB's magic, and be long
    enough for the last page both of them name; ``lock.mdb`` must be a regular file.
    Missing files are fine (LMDB creates them).
    """
    data = path / "data.mdb"
    try:
        fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise IndexDamaged(f"the index file {data} cannot be opened ({exc.strerror}); "
                           f"{_REBUILD}") from None
    if fd >= 0:
        try:
            _check_data(fd, data)
        finally:
            os.close(fd)
    try:
        st = os.lstat(path / "lock.mdb")
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise IndexDamaged(f"the index lock file {path / 'lock.mdb'} is not a regular file; "
                           f"{_REBUILD}")


def _check_data(fd: int, data: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise IndexDamaged(f"the index file {data} is not a regular file; {_REBUILD}")
    if st.st_size == 0:
        return  # LMDB initialises an empty file (a crash right after creating it)
    head = os.pread(fd, _META.size, 0)
    try:
        psize = _meta(head, 0, 0)[0]
        metas = [_meta(head, 0, psize), _meta(os.pread(fd, _META.size, psize), 1, psize)]
    except ValueError as exc:
        raise IndexDamaged(f"the index file {data} is damaged ({exc}); {_REBUILD}") from None
    need = max((last + 1) * psize for _p, last in metas)
    if st.st_size < max(need, 2 * psize):
        raise IndexDamaged(f"the index file {data} is truncated ({st.st_size} bytes, its "
                           f"meta pages need {max(need, 2 * psize)}); {_REBUILD}")


def _meta(page: bytes, pgno: int, psize: int) -> tuple[int, int]:
    """(page size, last page) from one meta page; ValueError if it is not one."""
    if len(page) < _META.size:
        raise ValueError(f"meta page {pgno} is cut short")
    got, flags, magic, version, _addr, _mapsize, pad, last, _txn = _META.unpack(page)
    if magic != _META_MAGIC or version != 1 or not flags & _META_FLAG or got != pgno:
        raise ValueError(f"meta page {pgno} is not an LMDB meta page")
    if not 512 <= pad <= 65536 or pad & (pad - 1) or (psize and pad != psize):
        raise ValueError(f"meta page {pgno} names a bad page size {pad}")
    return pad, last


class Index:
    """A thin typed wrapper over one LMDB environment."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create index folder {path}: {exc.strerror}") from None
        check_files(self.path)
        with _guard(self.path):
            self._env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, subdir=True,
                                  metasync=False)
            try:
                self._objects = self._env.open_db(b"objects")
                self._refs = self._env.open_db(b"refs")
            except BaseException:
                self._env.close()
                raise

    @classmethod
    def recreate(cls, path: Path) -> Index:
        """Delete whatever is at ``path`` (even a garbage LMDB file) and start empty.

        The index is a cache, so throwing a damaged one away loses nothing; the
        caller (``cas fsck --rebuild-index``) refills it from the object files.
        """
        path = Path(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError as exc:
            raise StoreError(f"cannot remove the old index {path}: {exc.strerror}") from None
        return cls(path)

    def close(self) -> None:
        self._env.close()

    def add(self, items: Iterable[tuple[ObjectId, IndexEntry]]) -> None:
        """Record objects (idempotent, last one wins), in one write transaction."""
        with _guard(self.path), self._env.begin(write=True, db=self._objects) as txn:
            for oid, e in items:
                txn.put(oid.digest, _ENTRY.pack(int(e.kind), e.raw_size, e.stored_size,
                                                e.verified_ctime))

    def get(self, oid: ObjectId) -> IndexEntry | None:
        """The entry of one object, or None if the index does not know it."""
        with _guard(self.path), self._env.begin(db=self._objects) as txn:
            val = txn.get(oid.digest)
            return None if val is None else _unpack(oid.digest, val)[1]

    def remove(self, oids: Iterable[ObjectId]) -> None:
        with _guard(self.path), self._env.begin(write=True, db=self._objects) as txn:
            for oid in oids:
                txn.delete(oid.digest)

    def items(self) -> Iterator[tuple[ObjectId, IndexEntry]]:
        """Every indexed object (a snapshot, in id order)."""
        with _guard(self.path), self._env.begin(db=self._objects) as txn:
            for key, val in txn.cursor():
                yield _unpack(key, val)

    def set_ref(self, name: str, oid: ObjectId | None) -> None:
        with _guard(self.path), self._env.begin(write=True, db=self._refs) as txn:
            if oid is None:
                txn.delete(name.encode())
            else:
                txn.put(name.encode(), str(oid).encode())

    def stats(self) -> tuple[int, int, int]:
        """Object count, total raw bytes, total stored bytes."""
        count = raw = stored = 0
        for _oid, e in self.items():
            count += 1
            raw += e.raw_size
            stored += e.stored_size
        return count, raw, stored
