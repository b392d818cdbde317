"""Tier 1: canonical trees, name rules, and put/get round trips (property tests)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.errors import FormatError, UnsupportedFile
from casstore.format.objects import ObjectId
from casstore.format.trees import Entry, Kind, Storage, decode_tree, encode_tree
from casstore.store.restore import restore
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store, StoreSettings

from helpers import make_tree, snapshot


def _file(name: bytes, data: bytes = b"x") -> Entry:
    return Entry(name, Kind.FILE, 0o644, len(data), 123, Storage.INLINE, None, data)


def test_encoding_is_canonical_regardless_of_order() -> None:
    a = [_file(b"b"), _file(b"a"), _file(b"c")]
    assert encode_tree(a) == encode_tree(list(reversed(a)))
    assert [e.name for e in decode_tree(encode_tree(a))] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_bad_names_refused_on_write(name: bytes) -> None:
    with pytest.raises(FormatError):
        encode_tree([_file(name)])


@pytest.mark.parametrize("name", [b".", b"..", b"a/b", b"a\0b"])
def test_bad_names_refused_on_read(name: bytes) -> None:
    good = encode_tree([_file(b"x" * len(name))])
    evil = good.replace(b"x" * len(name), name, 1)
    with pytest.raises(FormatError):
        decode_tree(evil)


def test_unsorted_or_trailing_bytes_refused() -> None:
    raw = encode_tree([_file(b"a"), _file(b"b")])
    swapped = raw.replace(b"\x01\x00a", b"\x01\x00c", 1)
    with pytest.raises(FormatError):
        decode_tree(swapped.replace(b"\x01\x00b", b"\x01\x00a", 1) + b"")
    with pytest.raises(FormatError):
        decode_tree(raw + b"\0")


def test_duplicate_names_refused() -> None:
    with pytest.raises(FormatError):
        encode_tree([_file(b"a"), _file(b"a")])


def test_put_get_round_trip_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    store = Store.open(tmp_path / "store", create=True)
    oid = put_paths(store, [src])
    restore(store, oid, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert put_paths(store, [src]) == oid


def test_special_files_refused_with_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    store = Store.open(tmp_path / "store", create=True)
    with pytest.raises(UnsupportedFile, match="pipe"):
        put_paths(store, [src])
    (src / "pipe").unlink()
    (src / "f").write_text("x")
    os.link(src / "f", src / "hard")
    with pytest.raises(UnsupportedFile, match="hard links"):
        put_paths(store, [src])


# -- property tests ------------------------------------------------------------------
names = st.text(alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"]),
                min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
# (seed, size): bytes are made in _build, so hypothesis never holds large examples.
contents = st.one_of(st.tuples(st.just(0), st.integers(0, 1500)),
                     st.tuples(st.integers(1, 1000), st.integers(1500, 200_000)))
mtimes = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
modes = st.sampled_from([0o644, 0o755, 0o600])
leaf = st.tuples(st.sampled_from(["file", "link"]), contents, modes, mtimes)
trees = st.recursive(leaf, lambda kids: st.dictionaries(names, kids, max_size=5), max_leaves=12)


def _build(path: Path, node) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            _build(path / name, child)
        return
    kind, (seed, size), mode, mtime = node
    data = random.Random(seed).randbytes(size // 2) + bytes(size - size // 2)
    if kind == "link":
        os.symlink("t" + data[:20].hex(), path)
    else:
        path.write_bytes(data)
        os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


SMALL = StoreSettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, inline_max=1024,
                      durable=False)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(names, trees, max_size=6))
def test_property_round_trip_and_stable_id(tree: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        _build(base / "src", tree)
        os.utime(base / "src", ns=(5, 5))
        store = Store.init(base / "store", SMALL)
        oid = put_paths(store, [base / "src"])
        restore(store, oid, base / "out")
        assert snapshot(base / "out") == snapshot(base / "src")
        shutil.copytree(base / "src", base / "copy", symlinks=True)
        _copy_times(base / "src", base / "copy")
        assert put_paths(store, [base / "copy"]) == oid
        assert isinstance(oid, ObjectId)
        store.close()


def _copy_times(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*"), reverse=True):
        st_ = os.lstat(p)
        os.utime(dst / p.relative_to(src), ns=(st_.st_mtime_ns, st_.st_mtime_ns),
                 follow_symlinks=False)


def test_small_files_are_packed_per_directory(tmp_path: Path) -> None:
    """Small files' bytes live in a shared pack, so the tree holds metadata only."""
    from casstore.view.reader import TreeReader, root_entry

    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i:02}.jl").write_bytes(random.Random(i).randbytes(3000))
    (src / "empty").write_bytes(b"")
    store = Store.init(tmp_path / "store", StoreSettings(pack_max=64 * 1024, durable=False))
    oid = put_paths(store, [src])
    reader = TreeReader(store)
    entries = reader.dir(oid).entries
    packs = {e.oid for e in entries if e.storage == Storage.PACKED}
    assert len(packs) == 3  # 150 kB in packs of at most 64 KiB
    assert [e.storage for e in entries if e.name == b"empty"] == [Storage.INLINE]
    assert len(store.read_stored(oid)) < 4000  # metadata only, no file bytes
    for i in (0, 21, 49):
        e = reader.lookup(root_entry(oid), f"f{i:02}.jl")
        assert reader.read(e, 0, 10**6) == (src / f"f{i:02}.jl").read_bytes()
        assert reader.read(e, 100, 50) == (src / f"f{i:02}.jl").read_bytes()[100:150]


def test_pack_too_short_is_an_error(tmp_path: Path) -> None:
    from casstore.view.reader import packed_bytes

    e = Entry(b"x", Kind.FILE, 0o644, 10, 0, Storage.PACKED, ObjectId.of(b"p"), offset=5)
    with pytest.raises(FormatError):
        packed_bytes(b"0123456789", e)


def test_restore_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    """A tree may hold symlinks named like temp files; restoring must not follow them."""
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_bytes(b"payload" * 5000)
    for name in (".x.cas-tmp", ".x.tmp", "x.cas-tmp"):
        os.symlink(victim, src / name)
    store = Store.open(tmp_path / "store", create=True)
    oid = put_paths(store, [src])
    restore(store, oid, tmp_path / "out")
    assert victim.read_text() == "untouched"
    assert (tmp_path / "out" / "x").read_bytes() == b"payload" * 5000
    assert not (tmp_path / "out" / "x").is_symlink()


def test_reader_refuses_sizes_that_disagree(tmp_path: Path) -> None:
    """Every object verifies, but the entry's size lies: an error, not short bytes."""
    from casstore.format.objects import ObjType
    from casstore.view.reader import TreeReader, root_entry

    store = Store.open(tmp_path / "store", create=True)
    chunk = store.put_raw(ObjType.CHUNK, b"y" * 20000)
    lying = Entry(b"f", Kind.FILE, 0o644, 30000, 0, Storage.CHUNK, chunk)
    tree = store.put_raw(ObjType.TREE, encode_tree([lying]))
    reader = TreeReader(store)
    with pytest.raises(FormatError, match="entry says"):
        reader.read(reader.lookup(root_entry(tree), "f"), 0, 100)


def test_store_files_are_world_readable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(random.Random(3).randbytes(50_000))
    store = Store.open(tmp_path / "store", create=True)
    put_paths(store, [src])
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "store" / "objects").rglob("*")
             if p.is_file()}
    assert modes == {0o644}
