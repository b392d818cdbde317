"""The filesystem model: path lookup and byte reads over a tree, with caches.

This is the one model that ``cas cat/ls/get``, the FUSE adapter and the server
share; it knows nothing about FUSE.  Decoded trees and blob manifests are cached
(LRU by count) so metadata lookups never decode a tree twice, and verified chunks
are cached by size.  Errors stay typed (missing vs corrupt) until a boundary maps
them.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from casstore.errors import FormatError, NotFound
from casstore.objects import ObjectId, ObjType
from casstore.remote import ObjectSource, fetch
from casstore.trees import Entry, Kind, Storage, decode_blob, decode_tree


class LRU:
    """A small thread-safe LRU keyed by object id, bounded by total weight."""

    def __init__(self, max_weight: int) -> None:
        self.max_weight = max_weight
        self.weight = 0
        self._d: OrderedDict[ObjectId, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: ObjectId) -> object | None:
        with self._lock:
            item = self._d.get(key)
            if item is None:
                return None
            self._d.move_to_end(key)
            return item[0]

    def put(self, key: ObjectId, value: object, weight: int) -> None:
        with self._lock:
            if key in self._d:
                return
            self._d[key] = (value, weight)
            self.weight += weight
            while self.weight > self.max_weight and len(self._d) > 1:
                _k, (_v, w) = self._d.popitem(last=False)
                self.weight -= w


@dataclass
class Dir:
    """A decoded tree: entries in order, plus a name index."""

    entries: list[Entry]
    by_name: dict[bytes, Entry]


@dataclass
class Blob:
    """A decoded blob manifest with chunk start offsets for bisecting."""

    size: int
    oids: list[ObjectId]
    starts: list[int]


def packed_bytes(pack: bytes, entry: Entry) -> bytes:
    """A packed file's bytes, refusing a range the pack does not hold."""
    end = entry.offset + entry.size
    if end > len(pack):
        raise FormatError(f"pack {entry.oid} is too short for {entry.name!r}")
    return pack[entry.offset:end]


def root_entry(tree: ObjectId, mtime_ns: int = 0) -> Entry:
    """The synthetic entry for a root tree (its own mode and mtime are not stored)."""
    return Entry(b"", Kind.DIR, 0o755, 0, mtime_ns, None, tree)


class TreeReader:
    """Read-only access to trees and files from any :class:`ObjectSource`."""

    def __init__(self, source: ObjectSource, *, tree_cache_bytes: int = 64 << 20,
                 chunk_cache_bytes: int = 128 << 20) -> None:
        self.source = source
        self.trees = LRU(tree_cache_bytes)  # weighed by raw size: memory stays bounded
        self.blobs = LRU(tree_cache_bytes)
        self.chunks = LRU(chunk_cache_bytes)

    # -- metadata ----------------------------------------------------------------
    def dir(self, oid: ObjectId) -> Dir:
        d = self.trees.get(oid)
        if d is None:
            raw = fetch(self.source, oid, ObjType.TREE)
            entries = decode_tree(raw)
            d = Dir(entries, {e.name: e for e in entries})
            self.trees.put(oid, d, len(raw))
        return d  # type: ignore[return-value]

    def listdir(self, entry: Entry) -> list[Entry]:
        if entry.kind != Kind.DIR or entry.oid is None:
            raise NotFound("not a directory")
        return self.dir(entry.oid).entries

    def child(self, entry: Entry, name: bytes) -> Entry:
        if entry.kind != Kind.DIR or entry.oid is None:
            raise NotFound(f"{name.decode(errors='replace')}: parent is not a directory")
        found = self.dir(entry.oid).by_name.get(name)
        if found is None:
            raise NotFound(f"no such entry {name.decode(errors='replace')!r}")
        return found

    def lookup(self, root: Entry, path: str | bytes) -> Entry:
        """Walk a slash-separated path from ``root`` (no symlink following)."""
        raw = path.encode() if isinstance(path, str) else path
        entry = root
        for part in raw.split(b"/"):
            if part in (b"", b"."):
                continue
            entry = self.child(entry, part)
        return entry

    def walk(self, entry: Entry, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
        """Every (path, entry) below a directory, depth first, parents first."""
        for e in self.listdir(entry):
            path = prefix + e.name
            yield path, e
            if e.kind == Kind.DIR:
                yield from self.walk(e, path + b"/")

    # -- data --------------------------------------------------------------------
    def blob(self, oid: ObjectId) -> Blob:
        b = self.blobs.get(oid)
        if b is None:
            raw = fetch(self.source, oid, ObjType.BLOB)
            size, refs = decode_blob(raw)
            starts, pos = [], 0
            for r in refs:
                starts.append(pos)
                pos += r.length
            b = Blob(size, [r.oid for r in refs], starts)
            self.blobs.put(oid, b, len(raw))
        return b  # type: ignore[return-value]

    def chunk(self, oid: ObjectId) -> bytes:
        data = self.chunks.get(oid)
        if data is None:
            data = fetch(self.source, oid, ObjType.CHUNK)
            self.chunks.put(oid, data, len(data))
        return data  # type: ignore[return-value]

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; every byte comes from a verified object."""
        if entry.kind != Kind.FILE:
            raise FormatError("not a regular file")
        if offset >= entry.size or size <= 0:
            return b""
        end = min(entry.size, offset + size)
        if entry.storage == Storage.INLINE:
            return entry.data[offset:end]
        assert entry.oid is not None
        if entry.storage == Storage.CHUNK:
            data = self.chunk(entry.oid)
            if len(data) != entry.size:
                raise FormatError(f"chunk {entry.oid} has {len(data)} bytes, "
                                  f"the entry says {entry.size}")
            return data[offset:end]
        if entry.storage == Storage.PACKED:
            return packed_bytes(self.chunk(entry.oid), entry)[offset:end]
        blob = self.blob(entry.oid)
        if blob.size != entry.size:
            raise FormatError(f"blob {entry.oid} holds {blob.size} bytes, "
                              f"the entry says {entry.size}")
        return self._read_blob(blob, offset, end)

    def _read_blob(self, b: Blob, offset: int, end: int) -> bytes:
        i = bisect.bisect_right(b.starts, offset) - 1
        parts = []
        while i < len(b.oids) and b.starts[i] < end:
            data = self.chunk(b.oids[i])
            want = (b.starts[i + 1] if i + 1 < len(b.starts) else b.size) - b.starts[i]
            if len(data) != want:
                raise FormatError(f"chunk {b.oids[i]} has {len(data)} bytes, "
                                  f"its manifest says {want}")
            lo = max(0, offset - b.starts[i])
            hi = min(len(data), end - b.starts[i])
            parts.append(data[lo:hi])
            i += 1
        return b"".join(parts)

    def file_chunk_ids(self, entry: Entry) -> list[ObjectId]:
        """The chunk ids a file's bytes come from (for prefetch and diagnostics)."""
        if entry.kind != Kind.FILE or entry.storage == Storage.INLINE or entry.oid is None:
            return []
        if entry.storage in (Storage.CHUNK, Storage.PACKED):
            return [entry.oid]
        return list(self.blob(entry.oid).oids)
