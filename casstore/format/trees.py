"""Canonical encodings of tree objects and blob manifests.

A tree lists one directory; a blob manifest lists the chunks of one large file.
The encodings are canonical (entries sorted by name bytes, fixed-width integers,
nothing optional), so the same directory always gets the same id, and the decoder
refuses anything a canonical encoder would not have written.  See docs/FORMAT.md.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from casstore.errors import FormatError
from casstore.format.objects import ID_BYTES, ObjectId, ObjType

TREE_MAGIC = b"CASTREE1"
BLOB_MAGIC = b"CASBLOB1"
ENTRY_HEAD = struct.Struct("<BHQq")  # kind, mode, size, mtime_ns (after the name)
_COUNT = struct.Struct("<I")
_U16 = struct.Struct("<H")
_CHUNKREF = struct.Struct("<32sI")
_PACKREF = struct.Struct("<32sQ")
PACKREF_SIZE = _PACKREF.size  # a packed file's reference: pack id, offset
MAX_NAME = 255  # bytes, as Linux's NAME_MAX (FORMAT §4)
MODE_MASK = 0o7777


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


class Storage(enum.IntEnum):
    """Where a file's bytes live."""

    INLINE = 0  # in the tree entry itself (writers use it for empty files only)
    CHUNK = 1  # one chunk object
    BLOB = 2  # a blob manifest listing chunks
    PACKED = 3  # a byte range of a pack: one chunk holding a directory's small files


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry, decoded.

    ``data`` is inline bytes or a symlink target; ``oid`` is the child tree, chunk,
    blob or pack; ``offset`` is where a packed file's bytes start in its pack.
    """

    name: bytes
    kind: Kind
    mode: int
    size: int
    mtime_ns: int
    storage: Storage | None = None
    oid: ObjectId | None = None
    data: bytes = b""
    offset: int = 0

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)


def check_name(name: bytes, max_len: int = MAX_NAME) -> None:
    """Refuse names that could escape or confuse a directory (on write and on read)."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FormatError(f"invalid entry name {name[:64]!r}")
    if len(name) > max_len:
        raise FormatError(f"entry name too long ({len(name)} bytes)")


def encode_tree(entries: Iterable[Entry]) -> bytes:
    """Canonical bytes of a directory; raises on duplicate or invalid names."""
    items = sorted(entries, key=lambda e: e.name)
    out = [TREE_MAGIC, _COUNT.pack(len(items))]
    prev: bytes | None = None
    for e in items:
        check_name(e.name)
        if e.name == prev:
            raise FormatError(f"duplicate entry name {e.name!r}")
        prev = e.name
        out.append(_encode_entry(e))
    return b"".join(out)


def _encode_entry(e: Entry) -> bytes:
    head = _U16.pack(len(e.name)) + e.name + ENTRY_HEAD.pack(e.kind, e.mode & MODE_MASK,
                                                              e.size, e.mtime_ns)
    if e.kind == Kind.DIR:
        assert e.oid is not None
        return head + e.oid.digest
    if e.kind == Kind.SYMLINK:
        if len(e.data) != e.size:
            raise FormatError(f"symlink {e.name!r}: size does not match target")
        return head + e.data
    if e.storage == Storage.INLINE:
        if len(e.data) != e.size:
            raise FormatError(f"file {e.name!r}: size does not match inline data")
        return head + bytes([Storage.INLINE]) + e.data
    assert e.oid is not None and e.storage is not None
    if e.storage == Storage.PACKED:
        return head + bytes([Storage.PACKED]) + _PACKREF.pack(e.oid.digest, e.offset)
    return head + bytes([e.storage]) + e.oid.digest


def decode_tree(raw: bytes) -> list[Entry]:
    """Parse and validate a tree object's bytes.

    Entries whose name is longer than MAX_NAME are left out with a log warning
    (FORMAT §4): no Linux directory can show them, and failing the whole tree would
    hide their siblings.  :func:`decode_tree_checked` also returns them.
    """
    entries, skipped = decode_tree_checked(raw)
    warn_skipped(skipped)
    return entries


def warn_skipped(names: list[bytes]) -> None:
    """One log line per entry left out for a name over MAX_NAME bytes."""
    if not names:
        return
    import logging  # rare: import logging only then (it costs every short command)

    log = logging.getLogger(__name__)
    for name in names:
        log.warning("skipping a tree entry whose name is %d bytes (limit %d): %r...",
                    len(name), MAX_NAME, name[:40])


def decode_tree_checked(raw: bytes) -> tuple[list[Entry], list[bytes]]:
    """Parse a tree: (entries, names of entries skipped as too long), for fsck's warnings."""
    count, pos = tree_header(raw)
    entries, _offsets, skipped = decode_entries(memoryview(raw), pos, count)
    return entries, skipped


def tree_header(raw: bytes) -> tuple[int, int]:
    """(entry count, offset of the first entry) of a tree object's bytes; the
    entries themselves are checked by :func:`decode_entries` or :func:`decode_entry_at`."""
    if not raw.startswith(TREE_MAGIC):
        raise FormatError("not a tree object")
    pos = len(TREE_MAGIC)
    (count,) = _unpack(_COUNT, memoryview(raw), pos)
    return count, pos + _COUNT.size


def decode_entries(view: memoryview, pos: int, count: int
                   ) -> tuple[list[Entry], list[int], list[bytes]]:
    """``count`` entries from ``pos`` to the end of ``view``: (entries, their start
    offsets, names skipped as longer than MAX_NAME).  Checks canonical order (skipped
    names included, so they cannot smuggle entries out of order) and that no bytes
    follow the last entry."""
    entries: list[Entry] = []
    offsets: list[int] = []
    skipped: list[bytes] = []
    prev: bytes | None = None
    for _ in range(count):
        e, nxt = decode_entry_at(view, pos)
        if prev is not None and e.name <= prev:
            raise FormatError("tree entries are not in canonical order")
        prev = e.name
        if len(e.name) > MAX_NAME:
            skipped.append(e.name)
        else:
            entries.append(e)
            offsets.append(pos)
        pos = nxt
    if pos != len(view):
        raise FormatError("trailing bytes after tree entries")
    return entries, offsets, skipped


def decode_entry_at(view: memoryview, pos: int) -> tuple[Entry, int]:
    """The entry that starts at ``pos`` of a tree's bytes, and where the next one starts.

    Every field is checked (name bytes, kind, mode bits, storage kind, lengths), but
    not the entry's place in the tree: :func:`decode_entries` checks order and
    trailing bytes.  For readers that keep a tree's bytes and decode one entry on
    demand from offsets they validated before.  A name over MAX_NAME is returned
    as is; callers skip it."""
    (nlen,) = _unpack(_U16, view, pos)
    pos += 2
    name = _take(view, pos, nlen)
    pos += nlen
    check_name(name, max_len=0xFFFF)  # too long is skipped by the caller, not corrupt
    kind_b, mode, size, mtime = _unpack(ENTRY_HEAD, view, pos)
    pos += ENTRY_HEAD.size
    try:
        kind = Kind(kind_b)
    except ValueError:
        raise FormatError(f"entry {name!r} has unknown kind {kind_b}") from None
    if mode & ~MODE_MASK:
        raise FormatError(f"entry {name!r} has invalid mode bits")
    if kind == Kind.DIR:
        oid = ObjectId(_take(view, pos, ID_BYTES))
        return Entry(name, kind, mode, size, mtime, None, oid), pos + ID_BYTES
    if kind == Kind.SYMLINK:
        return Entry(name, kind, mode, size, mtime, data=_take(view, pos, size)), pos + size
    return _decode_file(view, pos, name, mode, size, mtime)


def _decode_file(view: memoryview, pos: int, name: bytes, mode: int, size: int,
                 mtime: int) -> tuple[Entry, int]:
    try:
        storage = Storage(_take(view, pos, 1)[0])
    except ValueError:
        raise FormatError(f"file {name!r} has unknown storage kind") from None
    pos += 1
    if storage == Storage.INLINE:
        data = _take(view, pos, size)
        return Entry(name, Kind.FILE, mode, size, mtime, storage, data=data), pos + size
    if storage == Storage.PACKED:
        digest, offset = _unpack(_PACKREF, view, pos)
        entry = Entry(name, Kind.FILE, mode, size, mtime, storage, ObjectId(digest), offset=offset)
        return entry, pos + _PACKREF.size
    oid = ObjectId(_take(view, pos, ID_BYTES))
    return Entry(name, Kind.FILE, mode, size, mtime, storage, oid), pos + ID_BYTES


def _unpack(st: struct.Struct, view: memoryview, pos: int) -> tuple:
    if pos + st.size > len(view):
        raise FormatError("tree object is truncated")
    return st.unpack_from(view, pos)


def _take(view: memoryview, pos: int, n: int) -> bytes:
    if pos + n > len(view):
        raise FormatError("object is truncated")
    return bytes(view[pos:pos + n])


@dataclass(frozen=True, slots=True)
class ChunkRef:
    oid: ObjectId
    length: int


def encode_blob(chunks: list[ChunkRef]) -> bytes:
    """Canonical bytes of a blob manifest (the chunk list of one file)."""
    total = sum(c.length for c in chunks)
    parts = [BLOB_MAGIC, struct.pack("<QI", total, len(chunks))]
    parts += [_CHUNKREF.pack(c.oid.digest, c.length) for c in chunks]
    return b"".join(parts)


def decode_blob(raw: bytes) -> tuple[int, list[ChunkRef]]:
    """Parse a blob manifest; the lengths must add up to the declared size."""
    if not raw.startswith(BLOB_MAGIC):
        raise FormatError("not a blob manifest")
    if len(raw) < len(BLOB_MAGIC) + 12:
        raise FormatError("blob manifest is truncated")
    total, count = struct.unpack_from("<QI", raw, len(BLOB_MAGIC))
    pos = len(BLOB_MAGIC) + 12
    if len(raw) != pos + count * _CHUNKREF.size:
        raise FormatError("blob manifest has the wrong length")
    chunks = [ChunkRef(ObjectId(d), n) for d, n in _CHUNKREF.iter_unpack(raw[pos:])]
    if sum(c.length for c in chunks) != total or any(c.length == 0 for c in chunks):
        raise FormatError("blob manifest chunk lengths do not add up")
    return total, chunks


# What a reference demands of its target's size: ("exact", n) or ("within", end).
Need = tuple[str, int] | None


class Child(NamedTuple):
    """One reference a tree or blob manifest holds: the object, the type the
    reference needs it to have, the size it demands, and the entry name (trees).
    A tuple: a walk makes one per entry of every tree."""

    oid: ObjectId
    kind: ObjType
    need: Need
    name: bytes = b""


def children(kind: ObjType, raw: bytes) -> list[Child]:
    """The objects one decoded tree or blob manifest refers to (a chunk has none).

    The one definition of the object graph's edges: every walk over reachable
    objects (fsck, gc, publish, push, pull, mirror) takes its children from here.
    """
    return [Child._make(t) for t in edges(kind, raw)]


def edges(kind: ObjType, raw: bytes) -> list[tuple[ObjectId, ObjType, Need, bytes]]:
    """:func:`children` as plain ``(oid, kind, need, name)`` tuples, for a walk that
    wraps each in its own node (one object per tree entry instead of two)."""
    if kind == ObjType.BLOB:
        return [(c.oid, ObjType.CHUNK, ("exact", c.length), b"") for c in decode_blob(raw)[1]]
    if kind != ObjType.TREE:
        return []
    out: list[tuple[ObjectId, ObjType, Need, bytes]] = []
    add = out.append
    for e in decode_tree(raw):
        how = _EDGE.get((e.kind, e.storage))
        if how is None or e.oid is None:
            continue
        ckind, need = how
        if need is None:
            add((e.oid, ckind, None, e.name))
        else:
            add((e.oid, ckind, (need, e.size if need == "exact" else e.offset + e.size),
                 e.name))
    return out


# (entry kind, storage) -> (child type, what the entry demands of its size)
_EDGE: dict[tuple[Kind, Storage | None], tuple[ObjType, str | None]] = {
    (Kind.DIR, None): (ObjType.TREE, None),
    (Kind.FILE, Storage.CHUNK): (ObjType.CHUNK, "exact"),
    (Kind.FILE, Storage.PACKED): (ObjType.CHUNK, "within"),
    (Kind.FILE, Storage.BLOB): (ObjType.BLOB, "exact"),
}
