"""Tier 0: object ids, framing and verification."""

from __future__ import annotations

import errno

import pytest

from casstore.errors import CasError, FormatError, ObjectCorrupt, all_error_classes
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, decode, encode


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


def _every_error_class() -> list[type[CasError]]:
    """All CasError classes, after importing every casstore module (refinements such
    as the known-bad errors live beside their code, not in errors.py)."""
    import importlib
    import pkgutil

    import casstore

    for mod in pkgutil.walk_packages(casstore.__path__, "casstore."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    return all_error_classes()


def test_exit_codes_are_unique_in_range_and_inherited() -> None:
    # Exit codes are an API for scripts (borg-style): each class that defines one
    # has its own, below sysexits' 64 (70 is the CLI's internal-error code).
    classes = _every_error_class()
    assert len(classes) > 30  # the Julia and store refinements were found
    own = {c: vars(c)["exit_code"] for c in classes if "exit_code" in vars(c)}
    for cls, code in own.items():
        assert type(code) is int and 1 <= code < 64, (cls, code)
    by_code: dict[int, list[str]] = {}
    for cls, code in own.items():
        by_code.setdefault(code, []).append(cls.__name__)
    assert not {c: n for c, n in by_code.items() if len(n) > 1}
    # A refinement without its own code answers with its parent's.
    for cls in classes:
        if cls is not CasError and cls not in own:
            parent = next(b for b in cls.__mro__[1:] if issubclass(b, CasError))
            assert cls.exit_code == parent.exit_code, cls
    for cls in classes:
        assert cls.__doc__, cls
        assert cls.errno in errno.errorcode, (cls, cls.errno)


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_cli_boundary_maps_each_error_to_its_code(cls, capsys) -> None:
    """`cas`'s one error boundary turns a raised error into one line and its code."""
    from casstore.cli.common import handle_errors

    @handle_errors
    def fails() -> None:
        raise cls(f"{cls.__name__} happened")

    with pytest.raises(SystemExit) as ei:
        fails()
    assert ei.value.code == cls.exit_code
    err = capsys.readouterr().err
    assert err == f"cas: error: {cls.__name__} happened\n"


def test_forged_sizes_are_refused_without_allocating() -> None:
    import struct

    import zstandard

    from casstore.format.objects import HEADER, MAGIC, Codec

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
