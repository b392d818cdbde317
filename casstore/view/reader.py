"""The tree-object layer under the filesystem model: decode, cache and read objects.

:class:`TreeReader` turns object ids into decoded trees, blob manifests and
verified chunk bytes, all cached, over any :class:`ObjectSource` (which may be
a composed one: ``KnownBad(ObjectCache(LocalSource))``).  It knows paths only
through :func:`walk_path`, the one path walk that :mod:`casstore.view.vfs` uses too.

Memory: a big decoded tree is kept as its raw bytes plus one
offset and one kind byte per entry (:class:`Dir`), not as a list and a dict of
:class:`Entry` objects.  Its entries are decoded again on demand, and a name is
found by bisecting the sorted names in place.  A 1M-entry tree costs about its
own size plus 5 bytes an entry; small trees (the common case) are also kept
decoded for speed, and counted so.  Every cache here is bounded by bytes.
"""

from __future__ import annotations

import bisect
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from casstore.errors import FormatError, NotFound
from casstore.format.objects import ID_BYTES, ObjectId, ObjType
from casstore.format.trees import (
    ENTRY_HEAD,
    MAX_NAME,
    MODE_MASK,
    PACKREF_SIZE,
    Entry,
    Kind,
    Storage,
    check_name,
    decode_blob,
    decode_entries,
    decode_entry_at,
    tree_header,
    warn_skipped,
)
from casstore.sources.base import ObjectSource, fetch

_U16 = struct.Struct("<H")
_DIR, _FILE, _LINK = int(Kind.DIR), int(Kind.FILE), int(Kind.SYMLINK)
_INLINE, _PACKED = int(Storage.INLINE), int(Storage.PACKED)
_STORED = (int(Storage.CHUNK), int(Storage.BLOB))
N = TypeVar("N")


class LRU:
    """A small thread-safe LRU keyed by object id, bounded by total weight (bytes)."""

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


SMALL_DIR = 2048  # up to this many entries a tree is also kept decoded, for speed
_SMALL_ENTRY_BYTES = 400  # what one decoded Entry plus its index slot costs


class Dir:
    """A decoded tree: raw bytes, entry offsets and kinds; small ones also decoded.

    Built by :meth:`decode`, which validates every entry exactly as
    :func:`casstore.format.trees.decode_tree` does.  A tree of at most ``SMALL_DIR``
    entries (nearly all of them) also keeps its Entry objects and a name index,
    so lookups cost a dict read; a bigger one stays compact (its entries are
    decoded on demand and found by bisection), so a million-entry directory
    costs megabytes, not hundreds of them.  :attr:`nbytes` counts either form.
    """

    __slots__ = ("raw", "offs", "kinds", "_entries", "_index")

    def __init__(self, raw: bytes, offs: array, kinds: bytes,
                 entries: list[Entry] | None = None) -> None:
        self.raw, self.offs, self.kinds = raw, offs, kinds
        self._entries = entries
        self._index = {e.name: i for i, e in enumerate(entries)} if entries is not None else None

    @classmethod
    def decode(cls, raw: bytes) -> Dir:
        """Validate every entry (the rules of :func:`casstore.format.trees.decode_tree`:
        names via ``check_name``, kinds, modes, storage kinds, lengths, canonical
        order, no trailing bytes) in one tight pass that builds no Entry objects:
        a 1M-entry tree must not cost seconds and hundreds of MB to open."""
        count, pos = tree_header(raw)
        end = len(raw)
        if count <= SMALL_DIR:
            return cls._decode_small(raw, pos, count)
        offs = array("I" if end < 1 << 32 else "Q")
        kinds = bytearray()
        skipped: list[bytes] = []
        prev: bytes | None = None
        unpack_u16, unpack_head, hsize = _U16.unpack_from, ENTRY_HEAD.unpack_from, ENTRY_HEAD.size
        for _ in range(count):
            if pos + 2 > end:
                raise FormatError("tree object is truncated")
            start = pos
            (nlen,) = unpack_u16(raw, pos)
            pos += 2
            name = raw[pos:pos + nlen]
            pos += nlen
            if pos + hsize > end:
                raise FormatError("tree object is truncated")
            check_name(name, max_len=0xFFFF)  # too long is skipped below, not corrupt
            if prev is not None and name <= prev:
                raise FormatError("tree entries are not in canonical order")
            prev = name
            kind, mode, size, _mtime = unpack_head(raw, pos)
            pos += hsize
            if mode & ~MODE_MASK:
                raise FormatError(f"entry {name!r} has invalid mode bits")
            if kind == _DIR:
                pos += ID_BYTES
            elif kind == _LINK:
                pos += size
            elif kind == _FILE:
                if pos >= end:
                    raise FormatError("object is truncated")
                storage = raw[pos]
                pos += 1
                if storage == _INLINE:
                    pos += size
                elif storage == _PACKED:
                    pos += PACKREF_SIZE
                elif storage in _STORED:
                    pos += ID_BYTES
                else:
                    raise FormatError(f"file {name!r} has unknown storage kind")
            else:
                raise FormatError(f"entry {name!r} has unknown kind {kind}")
            if pos > end:
                raise FormatError("object is truncated")
            if len(name) > MAX_NAME:
                skipped.append(bytes(name))
                continue
            offs.append(start)
            kinds.append(kind)
        if pos != end:
            raise FormatError("trailing bytes after tree entries")
        warn_skipped(skipped)
        return cls(raw, offs, bytes(kinds))

    @classmethod
    def _decode_small(cls, raw: bytes, pos: int, count: int) -> Dir:
        """A small tree: decode every entry once (decode_tree's own rules)."""
        entries, offsets, skipped = decode_entries(memoryview(raw), pos, count)
        warn_skipped(skipped)
        offs = array("I" if len(raw) < 1 << 32 else "Q", offsets)
        return cls(raw, offs, bytes(e.kind for e in entries), entries)

    @property
    def nbytes(self) -> int:
        """What this object costs in memory (the cache weight)."""
        small = _SMALL_ENTRY_BYTES * len(self.offs) if self._entries is not None else 0
        return len(self.raw) + self.offs.itemsize * len(self.offs) + len(self.kinds) + 200 + small

    def __len__(self) -> int:
        return len(self.offs)

    def name(self, i: int) -> bytes:
        if self._entries is not None:
            return self._entries[i].name
        pos = self.offs[i]
        (n,) = _U16.unpack_from(self.raw, pos)
        return self.raw[pos + 2:pos + 2 + n]

    def names(self) -> list[bytes]:
        if self._entries is not None:
            return [e.name for e in self._entries]
        return [self.name(i) for i in range(len(self.offs))]

    def entry(self, i: int) -> Entry:
        if self._entries is not None:
            return self._entries[i]
        return decode_entry_at(memoryview(self.raw), self.offs[i])[0]

    def find(self, name: bytes) -> int:
        """Index of ``name`` (a dict read, or bisecting the names in place), or -1."""
        if self._index is not None:
            return self._index.get(name, -1)
        i = bisect.bisect_left(range(len(self.offs)), name, key=self.name)
        return i if i < len(self.offs) and self.name(i) == name else -1

    def get(self, name: bytes) -> Entry | None:
        i = self.find(name)
        return self.entry(i) if i >= 0 else None

    def iter_entries(self) -> Iterator[Entry]:
        if self._entries is not None:
            yield from self._entries
            return
        view = memoryview(self.raw)
        for pos in self.offs:
            yield decode_entry_at(view, pos)[0]

    @property
    def entries(self) -> list[Entry]:
        """All entries, decoded now (callers that need them all, e.g. restore)."""
        return list(self.iter_entries())

    def n_subdirs(self) -> int:
        return self.kinds.count(Kind.DIR)


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


def path_parts(path: str | bytes) -> list[bytes]:
    """A slash-separated path as raw name bytes ("", "." and repeated slashes dropped)."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return [p for p in raw.split(b"/") if p not in (b"", b".")]


def walk_path(start: N, path: str | bytes, child: Callable[[N, bytes], N]) -> N:
    """THE path walk (no symlink following), for any node type and child function."""
    node = start
    for part in path_parts(path):
        node = child(node, part)
    return node


class TreeReader:
    """Read-only access to trees and files from any :class:`ObjectSource`.

    Thread-safe: the caches lock themselves, and two threads decoding the same
    object at once just do the work twice.
    """

    def __init__(self, source: ObjectSource, *, tree_cache_bytes: int = 64 << 20,
                 chunk_cache_bytes: int = 128 << 20) -> None:
        self.source = source
        self.trees = LRU(tree_cache_bytes)
        self.blobs = LRU(tree_cache_bytes)
        self.chunks = LRU(chunk_cache_bytes)

    # -- metadata ----------------------------------------------------------------
    def dir(self, oid: ObjectId) -> Dir:
        d = self.trees.get(oid)
        if d is None:
            d = Dir.decode(fetch(self.source, oid, ObjType.TREE))
            self.trees.put(oid, d, d.nbytes)
        return d  # type: ignore[return-value]

    def dir_of(self, entry: Entry) -> Dir:
        if entry.kind != Kind.DIR or entry.oid is None:
            raise NotFound(f"{entry.name.decode(errors='replace')!r} is not a directory")
        return self.dir(entry.oid)

    def listdir(self, entry: Entry) -> list[Entry]:
        return self.dir_of(entry).entries

    def child(self, entry: Entry, name: bytes) -> Entry:
        if entry.kind != Kind.DIR or entry.oid is None:
            raise NotFound(f"{name.decode(errors='replace')}: parent is not a directory")
        found = self.dir(entry.oid).get(name)
        if found is None:
            raise NotFound(f"no such entry {name.decode(errors='replace')!r}")
        return found

    def lookup(self, root: Entry, path: str | bytes) -> Entry:
        """Walk a slash-separated path from ``root`` (no symlink following)."""
        return walk_path(root, path, self.child)

    def walk(self, entry: Entry, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
        """Every (path, entry) below a directory, depth first, parents first.

        Iterative: a crafted tree thousands of levels deep must not hit Python's
        recursion limit.
        """
        stack = [(prefix, self.dir_of(entry).iter_entries())]
        while stack:
            pre, it = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                continue
            path = pre + e.name
            yield path, e
            if e.kind == Kind.DIR:
                stack.append((path + b"/", self.dir_of(e).iter_entries()))

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
            self.blobs.put(oid, b, len(raw) + 120 * len(refs))
        return b  # type: ignore[return-value]

    def chunk(self, oid: ObjectId) -> bytes:
        data = self.chunks.get(oid)
        if data is None:
            data = fetch(self.source, oid, ObjType.CHUNK)
            self.chunks.put(oid, data, len(data))
        return data  # type: ignore[return-value]

    def layout(self, entry: Entry) -> Blob:
        """A stored file's chunk ids and their start offsets (one chunk: one span)."""
        assert entry.oid is not None
        if entry.storage == Storage.BLOB:
            blob = self.blob(entry.oid)
            if blob.size != entry.size:
                raise FormatError(f"blob {entry.oid} holds {blob.size} bytes, "
                                  f"the entry says {entry.size}")
            return blob
        return Blob(entry.size, [entry.oid], [0])

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
        return self._read_blob(self.layout(entry), offset, end)

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
