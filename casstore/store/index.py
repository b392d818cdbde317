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

import shutil
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


class Index:
    """A thin typed wrapper over one LMDB environment."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create index folder {path}: {exc.strerror}") from None
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
