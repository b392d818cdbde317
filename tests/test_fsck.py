"""fsck and gc on a damaged store: every problem listed, nothing swept.

Each kind of damage is applied to a copy of one store built by real puts and a
real signed release; fsck must name the damaged object or path and exit 1 once,
and gc must refuse (exit 31) and delete nothing.  Then all kinds at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from casstore.format.layout import object_path, release_path
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import ChunkRef, Entry, Kind, Storage, encode_blob, encode_tree
from casstore.releases.release import Release, load_secret, sign
from casstore.sources.local import LocalSource
from casstore.store.index import Index, IndexEntry
from casstore.store.writable import Store
from casstore.view.reader import TreeReader, root_entry

from helpers import assert_one_line_error, cas, make_tree

Damage = Callable[[Path, dict], list[str]]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("fsckbase")
    src = tmp / "src"
    src.mkdir()
    make_tree(src, big=3 << 20)
    store = tmp / "store"
    key = tmp / "key"
    main = cas(store, "put", str(src), "--name", "main", check=True).out.strip()
    cas(None, "keygen", str(key), check=True)
    cas(store, "release", "create", "rel", main, "--key", str(key), check=True)
    reader = TreeReader(LocalSource(store))
    root = root_entry(ObjectId.parse(main))
    big = reader.lookup(root, "big.bin")
    info = {
        "main": main, "key": key,
        "deep": str(reader.lookup(root, "src/deep").oid),
        "chunks": [str(o) for o in reader.file_chunk_ids(big)],
        "mid": str(reader.lookup(root, "mid.bin").oid),
        "b": str(reader.lookup(root, "src/deep/er/b.txt").oid),
    }
    return store, info


def _copy(base: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    store = tmp_path / "store"
    shutil.copytree(base[0], store, symlinks=True)
    return store, base[1]


def _count(store: Path) -> int:
    return sum(len(files) for _r, _d, files in os.walk(store / "objects"))


# -- the kinds of damage (each returns what fsck must name) ---------------------------
def malformed_tree(store: Path, info: dict) -> list[str]:
    """A tree-typed object whose hash is right but whose bytes are not a tree."""
    s = Store.open(store)
    try:
        oid = s.put_raw(ObjType.TREE, b"CASTREE1 this is not a tree")
    finally:
        s.close()
    (store / "refs" / "badtree").write_text(f"{oid}\n")
    return [str(oid)]


def object_is_a_folder(store: Path, info: dict) -> list[str]:
    path = object_path(store, ObjectId.parse(info["chunks"][0]))
    path.unlink()
    path.mkdir()
    return [info["chunks"][0]]


def object_is_a_fifo(store: Path, info: dict) -> list[str]:
    path = object_path(store, ObjectId.parse(info["chunks"][1]))
    path.unlink()
    os.mkfifo(path)
    return [info["chunks"][1]]


def object_is_a_symlink(store: Path, info: dict) -> list[str]:
    path = object_path(store, ObjectId.parse(info["mid"]))
    path.unlink()
    path.symlink_to("/dev/zero")
    return [info["mid"]]


def stray_refs(store: Path, info: dict) -> list[str]:
    (store / "refs" / "garbage").write_text("hello, not an id\n")
    (store / "refs" / "adir").mkdir()
    (store / "refs" / "bad name").write_text(f"{info['main']}\n")
    return ["refs/garbage", "refs/adir", "refs/bad name"]


def stray_releases(store: Path, info: dict) -> list[str]:
    (store / "releases" / "stray-file").write_text("x")
    (store / "releases" / "rel" / "junk.txt").write_text("x")
    (store / "releases" / "rel" / "000000000009.release").mkdir()
    (store / "releases" / "rel" / "000000000002.release").write_bytes(b"garbage")
    return ["releases/stray-file", "releases/rel/junk.txt",
            "releases/rel/000000000009.release", "releases/rel/000000000002.release"]


def release_with_a_chunk_root(store: Path, info: dict) -> list[str]:
    now = int(time.time())
    rel = Release("wrongtype", 1, info["b"], now, now + 86400)
    dest = release_path(store, "wrongtype", 1)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(sign(rel, load_secret(info["key"])))
    return ["release wrongtype@1", f"object {info['b']} is a chunk"]


def damaged_subtree(store: Path, info: dict) -> list[str]:
    path = object_path(store, ObjectId.parse(info["deep"]))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return [info["deep"]]


KINDS: dict[str, Damage] = {f.__name__: f for f in (
    malformed_tree, object_is_a_folder, object_is_a_fifo, object_is_a_symlink, stray_refs,
    stray_releases, release_with_a_chunk_root, damaged_subtree)}


def _check(store: Path, expected: list[str]) -> None:
    before = _count(store)
    res = cas(store, "fsck", timeout=60)
    assert res.code == 1, res
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    for text in expected:
        assert text in res.out, (text, res.out)
    assert res.out.strip().splitlines()[-1].endswith("problem(s)")
    gc = cas(store, "gc", "--grace", "0", timeout=60)
    assert_one_line_error(gc)
    assert gc.code == 31 and "nothing deleted" in gc.err, gc
    assert _count(store) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fsck_lists_and_gc_refuses(base: tuple[Path, dict], tmp_path: Path, kind: str) -> None:
    store, info = _copy(base, tmp_path)
    _check(store, KINDS[kind](store, info))


def test_fsck_lists_every_kind_at_once(base: tuple[Path, dict], tmp_path: Path) -> None:
    store, info = _copy(base, tmp_path)
    expected = [t for f in KINDS.values() for t in f(store, info)]
    _check(store, expected)


def test_fsck_checks_sizes_a_reference_claims(tmp_path: Path) -> None:
    """A blob whose per-chunk lengths lie, and a chunk entry whose size lies."""
    s = Store.init(tmp_path / "store")
    try:
        chunk = s.put_raw(ObjType.CHUNK, b"a" * 30_000)
        other = s.put_raw(ObjType.CHUNK, b"b" * 20_000)
        blob = s.put_raw(ObjType.BLOB, encode_blob([ChunkRef(chunk, 29_999),
                                                        ChunkRef(other, 20_000)]))
        entries = [Entry(b"lying-blob", Kind.FILE, 0o644, 49_999, 0, Storage.BLOB, blob),
                   Entry(b"lying-chunk", Kind.FILE, 0o644, 30_001, 0, Storage.CHUNK, chunk)]
        tree = s.put_raw(ObjType.TREE, encode_tree(entries))
        s.set_ref("main", tree)
    finally:
        s.close()
    res = cas(tmp_path / "store", "fsck")
    assert res.code == 1
    assert f"blob {blob} says {chunk} has 29999 bytes, it has 30000" in res.out, res.out
    assert f"tree {tree} says {chunk} has 30001 bytes, it has 30000" in res.out, res.out


# -- the index -----------------------------------------------------------------------
@pytest.mark.slow
def test_garbage_lmdb_file_is_rebuilt_from_objects(base: tuple[Path, dict],
                                                   tmp_path: Path) -> None:
    store, info = _copy(base, tmp_path)
    files = _count(store)
    (store / "index" / "data.mdb").write_bytes(b"garbage\n")
    (tmp_path / "f").write_bytes(b"new data" * 5000)
    for args in (("stat",), ("put", str(tmp_path / "f"))):
        res = cas(store, *args)
        assert_one_line_error(res)
        assert res.code == 30 and "cas fsck --rebuild-index" in res.err, res
    res = cas(store, "fsck")
    assert res.code == 1 and "index" in res.out and "damaged" in res.out
    cas(store, "fsck", "--rebuild-index", check=True)
    assert json.loads(cas(store, "--json", "stat", check=True).out)["objects"] == files
    cas(store, "put", str(tmp_path / "f"), check=True)
    assert cas(store, "fsck").code == 0
    cas(store, "get", info["main"], str(tmp_path / "out"), check=True)


def test_fsck_compares_the_index_with_the_objects(base: tuple[Path, dict],
                                                  tmp_path: Path) -> None:
    store, info = _copy(base, tmp_path)
    files = _count(store)
    idx = Index(store / "index")
    try:
        gone = [oid for oid, _e in list(idx.items())[:3]]
        idx.remove(gone)  # as a SIGKILLed put leaves it: objects the index lacks
    finally:
        idx.close()
    res = cas(store, "fsck")
    assert res.code == 0 and "3 object(s) missing from the index" in res.out, res.out
    idx = Index(store / "index")
    try:  # an entry claiming an object that is not there
        ghost = ObjectId.of(b"never stored")
        idx.add([(ghost, IndexEntry(ObjType.CHUNK, 12, 28, 1))])
    finally:
        idx.close()
    res = cas(store, "fsck")
    assert res.code == 1 and "1 entry(ies) for absent objects" in res.out, res.out
    cas(store, "fsck", "--rebuild-index", check=True)
    assert json.loads(cas(store, "--json", "stat", check=True).out)["objects"] == files
    res = cas(store, "fsck")
    assert res.code == 0 and "index" not in res.out, res.out
