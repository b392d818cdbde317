"""``cas get`` of crafted trees: very deep, symlink targets with NUL, blob manifests
whose per-chunk lengths lie, and names over the format's 255-byte limit.

The trees are written straight into a store (as a hostile mirror could serve
them); ``cas get`` runs as a real process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from casstore.errors import FormatError
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import (
    _COUNT,
    MAX_NAME,
    TREE_MAGIC,
    ChunkRef,
    Entry,
    Kind,
    Storage,
    _encode_entry,
    decode_tree,
    decode_tree_checked,
    encode_blob,
    encode_tree,
)
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas, remove_deep


def _raw_tree(entries: list[Entry]) -> bytes:
    """A tree encoded without the writer's checks (names are taken as given)."""
    items = sorted(entries, key=lambda e: e.name)
    return TREE_MAGIC + _COUNT.pack(len(items)) + b"".join(_encode_entry(e) for e in items)


def _file(name: bytes, data: bytes) -> Entry:
    return Entry(name, Kind.FILE, 0o644, len(data), 1, Storage.INLINE, data=data)


def _store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store", create=True)


@pytest.mark.slow
def test_get_of_a_1500_level_tree(tmp_path: Path) -> None:
    """No RecursionError (and no PATH_MAX trouble): the restore walk is iterative."""
    store = _store(tmp_path)
    oid = store.put_raw(ObjType.TREE, encode_tree([_file(b"leaf", b"bottom\n")]))
    for _ in range(1500):
        oid = store.put_raw(ObjType.TREE, encode_tree(
            [Entry(b"d", Kind.DIR, 0o755, 0, 1, None, oid)]))
    cas(tmp_path / "store", "get", str(oid), str(tmp_path / "out"), check=True)
    fd = os.open(tmp_path / "out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"bottom\n"
        os.close(leaf)
    finally:
        os.close(fd)
        remove_deep(tmp_path / "out")


def test_symlink_target_with_nul_is_one_line(tmp_path: Path) -> None:
    store = _store(tmp_path)
    bad = Entry(b"ln", Kind.SYMLINK, 0o777, 3, 1, data=b"a\0b")
    oid = store.put_raw(ObjType.TREE, _raw_tree([bad, _file(b"ok", b"fine")]))
    res = cas(tmp_path / "store", "get", str(oid), str(tmp_path / "out"))
    assert_one_line_error(res)
    assert res.code == FormatError.exit_code and "ln" in res.err, res


def test_blob_with_wrong_chunk_lengths_is_refused(tmp_path: Path) -> None:
    """Lengths that add up but do not match each chunk: nothing under the real name."""
    store = _store(tmp_path)
    a = store.put_raw(ObjType.CHUNK, b"A" * 100)
    b = store.put_raw(ObjType.CHUNK, b"B" * 200)
    blob = store.put_raw(ObjType.BLOB, encode_blob([ChunkRef(a, 150), ChunkRef(b, 150)]))
    entry = Entry(b"f", Kind.FILE, 0o644, 300, 1, Storage.BLOB, blob)
    oid = store.put_raw(ObjType.TREE, encode_tree([entry]))
    res = cas(tmp_path / "store", "get", str(oid), str(tmp_path / "out"))
    assert_one_line_error(res)
    assert res.code == FormatError.exit_code and "150" in res.err, res
    assert not (tmp_path / "out" / "f").exists()
    res = cas(tmp_path / "store", "get", str(blob), str(tmp_path / "out2"))
    assert_one_line_error(res)
    assert not (tmp_path / "out2").exists()


def test_names_over_255_bytes_are_skipped_not_fatal(tmp_path: Path, caplog) -> None:
    """A 4096-byte name hides nothing else: its siblings restore, it is logged."""
    long = b"L" * 4096
    raw = _raw_tree([_file(b"a", b"1"), _file(long, b"2"), _file(b"z", b"3")])
    with caplog.at_level(logging.WARNING, logger="casstore.format.trees"):
        names = [e.name for e in decode_tree(raw)]
    assert names == [b"a", b"z"]
    assert "4096 bytes" in caplog.text
    assert decode_tree_checked(raw)[1] == [long]
    store = _store(tmp_path)
    oid = store.put_raw(ObjType.TREE, raw)
    res = cas(tmp_path / "store", "get", str(oid), str(tmp_path / "out"))
    assert res.code == 0, res
    assert sorted(os.listdir(tmp_path / "out")) == ["a", "z"]
    assert "4096 bytes" in res.err
    res = cas(tmp_path / "store", "fsck")
    assert "corrupt" not in res.out and res.code == 0, res


def test_name_limit_is_255_bytes_on_write() -> None:
    ok = _file(b"n" * MAX_NAME, b"x")
    assert decode_tree(encode_tree([ok]))[0].name == ok.name
    with pytest.raises(FormatError, match="too long"):
        encode_tree([_file(b"n" * (MAX_NAME + 1), b"x")])


def test_long_name_still_counts_for_canonical_order() -> None:
    """Skipping must not let a tree smuggle entries out of order or duplicated."""
    raw = bytearray(_raw_tree([_file(b"b", b"1"), _file(b"c" * 300, b"2")]))
    swapped = TREE_MAGIC + _COUNT.pack(2) + _encode_entry(_file(b"c" * 300, b"2")) + \
        _encode_entry(_file(b"b", b"1"))
    decode_tree(bytes(raw))
    with pytest.raises(FormatError, match="order"):
        decode_tree(swapped)
    assert ObjectId.of(bytes(raw)) != ObjectId.of(swapped)
