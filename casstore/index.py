"""The embedded LMDB index: which objects exist, their sizes, and the refs.

The index is a cache of facts that the object and ref files already hold, so it
can always be rebuilt from them (``cas fsck --rebuild-index``).  LMDB gives
multi-process readers and serialised writers, which is what lets several
``cas put`` processes share one store, and keeps memory flat however large the
store grows (restic's in-memory index is the counter-example).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from casstore.errors import StoreError
from casstore.objects import ObjectId, ObjType

_ENTRY = struct.Struct("<BQQ")  # type, raw size, stored size
MAP_SIZE = 1 << 40  # sparse; LMDB only uses what it writes


@dataclass(frozen=True)
class IndexEntry:
    """What the index knows about one object."""

    kind: ObjType
    raw_size: int
    stored_size: int


class Index:
    """A thin typed wrapper over one LMDB environment."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True) if not readonly else None
            self._env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, subdir=True,
                                  readonly=readonly, lock=not readonly, metasync=False)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open index {path}: {exc}") from None
        self._objects = self._env.open_db(b"objects", create=not readonly)
        self._refs = self._env.open_db(b"refs", create=not readonly)

    def close(self) -> None:
        self._env.close()

    def add(self, items: Iterable[tuple[ObjectId, IndexEntry]]) -> None:
        """Record objects (idempotent), in one write transaction."""
        with self._env.begin(write=True, db=self._objects) as txn:
            for oid, e in items:
                txn.put(oid.digest, _ENTRY.pack(int(e.kind), e.raw_size, e.stored_size))

    def remove(self, oids: Iterable[ObjectId]) -> None:
        with self._env.begin(write=True, db=self._objects) as txn:
            for oid in oids:
                txn.delete(oid.digest)

    def items(self) -> Iterator[tuple[ObjectId, IndexEntry]]:
        """Every indexed object (a snapshot, in id order)."""
        with self._env.begin(db=self._objects) as txn:
            for key, val in txn.cursor():
                kind, raw, stored = _ENTRY.unpack(val)
                yield ObjectId(bytes(key)), IndexEntry(ObjType(kind), raw, stored)

    def set_ref(self, name: str, oid: ObjectId | None) -> None:
        with self._env.begin(write=True, db=self._refs) as txn:
            if oid is None:
                txn.delete(name.encode())
            else:
                txn.put(name.encode(), str(oid).encode())

    def clear(self) -> None:
        """Drop every entry, for a rebuild."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._objects, delete=False)
            txn.drop(self._refs, delete=False)

    def stats(self) -> tuple[int, int, int]:
        """Object count, total raw bytes, total stored bytes."""
        count = raw = stored = 0
        for _oid, e in self.items():
            count += 1
            raw += e.raw_size
            stored += e.stored_size
        return count, raw, stored
