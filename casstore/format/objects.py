"""Typed, content-addressed objects and their on-disk encoding.

An object's id is the BLAKE3-256 of its *uncompressed* bytes, written ``b3-<hex>``
so that another hash can be added later without ambiguity.  On disk each object is a
16-byte header (magic, type, codec, raw size) followed by the payload.  The header
type is checked on every read so a tree is never parsed from a chunk by mistake
(borg's untyped-metadata CVEs are the cautionary tale), and the hash is checked
before a single byte is returned.
"""

from __future__ import annotations

import enum
import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from casstore.errors import FormatError, ObjectCorrupt

ID_PREFIX = "b3-"
ID_BYTES = 32
MAGIC = b"CSO1"
HEADER = struct.Struct("<4sBBHQ")  # magic, type, codec, reserved, raw size
HEADER_SIZE = HEADER.size
# No writer makes objects near this (chunks <= 4 MiB, packs <= 256 KiB); readers
# refuse larger claims so a forged header cannot force a huge allocation.
MAX_RAW_SIZE = 256 << 20


class ObjType(enum.IntEnum):
    """What an object's payload is; stored in its header."""

    CHUNK = 1
    BLOB = 2
    TREE = 3


class Codec(enum.IntEnum):
    """How the payload is stored."""

    RAW = 0
    ZSTD = 1


@dataclass(frozen=True, order=True)
class ObjectId:
    """A 32-byte BLAKE3 digest with its textual form."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != ID_BYTES:
            raise FormatError(f"object id must be {ID_BYTES} bytes, got {len(self.digest)}")

    @classmethod
    def parse(cls, text: str) -> ObjectId:
        """Parse ``b3-<64 hex>``; anything else is a clear error."""
        if not text.startswith(ID_PREFIX):
            raise FormatError(f"not an object id (expected b3-<hex>): {text!r}")
        hexpart = text[len(ID_PREFIX):]
        if len(hexpart) != 2 * ID_BYTES:
            raise FormatError(f"not an object id (wrong length): {text!r}")
        try:
            return cls(bytes.fromhex(hexpart))
        except ValueError:
            raise FormatError(f"not an object id (not hex): {text!r}") from None

    @classmethod
    def of(cls, data: bytes | memoryview) -> ObjectId:
        """The id of some uncompressed bytes."""
        return cls(blake3.blake3(data).digest())

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return ID_PREFIX + self.digest.hex()

    def __repr__(self) -> str:
        return f"ObjectId({self})"


def is_object_id(text: str) -> bool:
    """True if ``text`` looks like an object id (no I/O)."""
    try:
        ObjectId.parse(text)
    except FormatError:
        return False
    return True


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """A per-thread compressor: contexts are not thread-safe but are costly to make."""
    cache = _local.__dict__.setdefault("cctx", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def encode(kind: ObjType, raw: bytes | memoryview, level: int = 3) -> bytes:
    """Frame ``raw`` for storage: header plus zstd payload (raw if zstd does not help)."""
    comp = _compressor(level).compress(raw)
    if len(comp) < len(raw):
        return HEADER.pack(MAGIC, int(kind), Codec.ZSTD, 0, len(raw)) + comp
    return HEADER.pack(MAGIC, int(kind), Codec.RAW, 0, len(raw)) + bytes(raw)


def decode(oid: ObjectId, stored: bytes, expect: ObjType | None = None) -> tuple[ObjType, bytes]:
    """Undo :func:`encode` and verify the hash; raise rather than return wrong bytes."""
    kind, codec, size = _header(oid, stored)
    # A chunk is uninterpreted bytes, so any verified object serves a chunk reference;
    # a tree or blob reference needs that exact type (FORMAT §3.3, "same bytes, two types").
    if expect is not None and expect != ObjType.CHUNK and kind != expect:
        raise FormatError(f"object {oid} is a {kind.name.lower()}, "
                          f"expected a {expect.name.lower()}")
    payload = memoryview(stored)[HEADER_SIZE:]
    raw = _unpack(oid, codec, payload, size)
    if blake3.blake3(raw).digest() != oid.digest:
        raise ObjectCorrupt(f"object {oid} does not match its hash")
    return kind, raw


def _unpack(oid: ObjectId, codec: Codec, payload: memoryview, size: int) -> bytes:
    """Decompress a payload, refusing anything whose size disagrees with the header.

    Objects may come from an untrusted mirror: a header or zstd frame claiming a
    huge size must be an error, not a huge allocation.
    """
    if size > MAX_RAW_SIZE:
        raise ObjectCorrupt(f"object {oid} claims {size} bytes (limit {MAX_RAW_SIZE})")
    if codec == Codec.RAW:
        raw = bytes(payload)
    else:
        try:
            claimed = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            raise ObjectCorrupt(f"object {oid} does not decompress") from None
        if claimed not in (-1, size):
            raise ObjectCorrupt(f"object {oid} has the wrong size ({claimed} != {size})")
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
        except zstandard.ZstdError:
            raise ObjectCorrupt(f"object {oid} does not decompress") from None
    if len(raw) != size:
        raise ObjectCorrupt(f"object {oid} has the wrong size ({len(raw)} != {size})")
    return raw



def peek_type(oid: ObjectId, head: bytes) -> ObjType:
    """The type a stored object's header claims, from its first HEADER_SIZE bytes.

    Cheap (no decompression, no hash): for checks such as "is this root a tree"
    before signing.  The claim is only a hint until :func:`decode` verifies it.
    """
    return _header(oid, head)[0]


def _header(oid: ObjectId, stored: bytes) -> tuple[ObjType, Codec, int]:
    """(type, codec, raw size) from a stored object's header, each checked known."""
    if len(stored) < HEADER_SIZE:
        raise ObjectCorrupt(f"object {oid} is truncated ({len(stored)} bytes)")
    magic, kind, codec, _res, size = HEADER.unpack_from(stored)
    if magic != MAGIC:
        raise ObjectCorrupt(f"object {oid} has a bad header")
    try:
        return ObjType(kind), Codec(codec), size
    except ValueError:
        raise ObjectCorrupt(f"object {oid} has an unknown type or codec") from None
