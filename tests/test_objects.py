"""Tier 0: object ids, framing and verification."""

from __future__ import annotations

import pytest

from casstore.errors import FormatError, ObjectCorrupt, all_error_classes
from casstore.objects import HEADER_SIZE, ObjectId, ObjType, decode, encode


def test_id_round_trip_and_prefix() -> None:
    oid = ObjectId.of(b"hello")
    assert str(oid).startswith("b3-") and len(str(oid)) == 3 + 64
    assert ObjectId.parse(str(oid)) == oid


@pytest.mark.parametrize("bad", ["", "b3-", "sha256-" + "0" * 64, "b3-" + "g" * 64,
                                 "b3-" + "0" * 63])
def test_bad_ids_refused(bad: str) -> None:
    with pytest.raises(FormatError):
        ObjectId.parse(bad)


def test_encode_decode_verifies() -> None:
    raw = b"x" * 10000
    oid = ObjectId.of(raw)
    stored = encode(ObjType.CHUNK, raw)
    assert len(stored) < len(raw)
    assert decode(oid, stored, ObjType.CHUNK) == (ObjType.CHUNK, raw)


def test_incompressible_stored_raw() -> None:
    import os

    raw = os.urandom(4096)
    stored = encode(ObjType.CHUNK, raw)
    assert decode(ObjectId.of(raw), stored)[1] == raw


@pytest.mark.parametrize("pos", [0, 5, HEADER_SIZE, HEADER_SIZE + 3, -1])
def test_any_flipped_byte_is_detected(pos: int) -> None:
    raw = bytes(range(256)) * 40
    stored = bytearray(encode(ObjType.CHUNK, raw))
    stored[pos] ^= 0x40
    with pytest.raises(ObjectCorrupt):
        decode(ObjectId.of(raw), bytes(stored))


def test_truncated_is_detected() -> None:
    raw = b"abc" * 1000
    stored = encode(ObjType.CHUNK, raw)
    for cut in (0, 4, HEADER_SIZE, len(stored) - 1):
        with pytest.raises(ObjectCorrupt):
            decode(ObjectId.of(raw), stored[:cut])


def test_wrong_type_is_refused() -> None:
    raw = b"CASTREE1" + b"\0" * 4
    stored = encode(ObjType.CHUNK, raw)
    with pytest.raises(FormatError):
        decode(ObjectId.of(raw), stored, ObjType.TREE)


def test_exit_codes_are_unique_and_documented() -> None:
    # Subclasses that only refine a message (e.g. the cache's known-bad errors)
    # inherit their parent's code; every class that defines a code has its own.
    classes = all_error_classes()
    codes = [c.exit_code for c in classes if "exit_code" in vars(c)]
    assert len(codes) == len(set(codes)), codes
    assert all(c.__doc__ for c in classes)


def test_forged_sizes_are_refused_without_allocating() -> None:
    import struct

    import zstandard

    from casstore.objects import HEADER, MAGIC, Codec

    raw = b"x" * 1000
    oid = ObjectId.of(raw)
    frame = zstandard.ZstdCompressor().compress(raw)
    huge = HEADER.pack(MAGIC, ObjType.CHUNK, Codec.ZSTD, 0, 1 << 46) + frame
    with pytest.raises(ObjectCorrupt, match="claims"):
        decode(oid, huge)
    # a frame whose own header claims another size than the object header
    lying = HEADER.pack(MAGIC, ObjType.CHUNK, Codec.ZSTD, 0, 999) + frame
    with pytest.raises(ObjectCorrupt, match="wrong size"):
        decode(oid, lying)
    assert struct.calcsize("<4sBBHQ") == HEADER_SIZE
