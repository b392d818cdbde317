"""Objects a put reuses are proven good first; a good copy repairs a damaged one.

Also: the index is the has/size lookup with a verified marker, and
casstore.json settings are validated.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from casstore.format.layout import object_path
from casstore.format.objects import ObjectId, ObjType, decode, encode
from casstore.format.trees import Entry, Kind, encode_tree
from casstore.store.writable import Store

from helpers import assert_one_line_error, cas, snapshot


def _raw(store: Path, oid: str) -> tuple[ObjType, bytes]:
    o = ObjectId.parse(oid)
    return decode(o, object_path(store, o).read_bytes())


def _chunk_of(store: Path, data: bytes) -> Path:
    return object_path(store, ObjectId.of(data))


@pytest.mark.slow
def test_put_repairs_a_flipped_chunk(tmp_path: Path) -> None:
    """Flip a byte in a stored chunk; putting the same data again repairs it."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(1).randbytes(200_000)
    (src / "f").write_bytes(data)
    store = tmp_path / "store"
    oid = cas(store, "put", str(src), check=True).out.strip()
    victim = _chunk_of(store, data)
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    victim.write_bytes(bytes(damaged))
    assert cas(store, "fsck").code == 1
    assert cas(store, "put", str(src), check=True).out.strip() == oid
    cas(store, "get", oid, str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "f").read_bytes() == data
    assert cas(store, "fsck").code == 0


@pytest.mark.slow
def test_put_repairs_an_unindexed_damaged_object(tmp_path: Path) -> None:
    """An object file nobody verified (copied in, index lost) is checked before reuse."""
    store = tmp_path / "store"
    data = random.Random(2).randbytes(100_000)
    (tmp_path / "f").write_bytes(data)
    oid = cas(store, "put", str(tmp_path / "f"), check=True).out.strip()
    path = _chunk_of(store, data)
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    cas(store, "fsck", "--rebuild-index")  # the damaged object is left out of the index
    assert cas(store, "put", str(tmp_path / "f"), check=True).out.strip() == oid
    cas(store, "get", oid, str(tmp_path / "back"), check=True)
    assert (tmp_path / "back").read_bytes() == data


def _big_tree_dir(root: Path) -> Path:
    """A directory whose tree encoding is larger than inline_max (so a file of those
    bytes is stored as a single chunk, not packed)."""
    root.mkdir()
    for i in range(300):
        p = root / (f"file-with-a-long-name-{i:04d}-" + "x" * 40)
        p.write_bytes(b"")
        os.utime(p, ns=(10**18, 10**18))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("size", ["chunk", "packed"])
def test_file_equal_to_a_tree_encoding_reads_back(tmp_path: Path, size: str) -> None:
    """Bytes equal to an existing tree's encoding share its id; the file must still read."""
    store = tmp_path / "store"
    if size == "chunk":
        tree_dir = _big_tree_dir(tmp_path / "t")
    else:
        tree_dir = tmp_path / "t"
        tree_dir.mkdir()
        (tree_dir / "one").write_bytes(b"hi")
    tree = cas(store, "put", str(tree_dir), check=True).out.strip()
    kind, enc = _raw(store, tree)
    assert kind == ObjType.TREE
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "looks-like-a-tree").write_bytes(enc)
    hid = cas(store, "put", str(holder), check=True).out.strip()
    cas(store, "get", hid, str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "looks-like-a-tree").read_bytes() == enc
    cas(store, "get", tree, str(tmp_path / "out2"), check=True)
    assert snapshot(tmp_path / "out2") == snapshot(tree_dir)
    res = cas(store, "fsck")
    assert res.code == 0, res.out


@pytest.mark.slow
def test_planted_chunk_cannot_poison_a_later_tree(tmp_path: Path) -> None:
    """A file planted with the bytes of a tree that a later put will make (trees are
    predictable: names, sizes, modes, mtimes) must not become that tree; the signed
    release must resolve."""
    store = tmp_path / "store"
    scratch = tmp_path / "scratch"
    victim = _big_tree_dir(tmp_path / "victim")
    future = cas(scratch, "put", str(victim), check=True).out.strip()
    _kind, enc = _raw(scratch, future)
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "payload").write_bytes(enc)
    pid = cas(store, "put", str(plant), check=True).out.strip()
    assert decode(ObjectId.parse(future), object_path(store, ObjectId.parse(future))
                  .read_bytes())[0] == ObjType.CHUNK
    assert cas(store, "put", str(victim), check=True).out.strip() == future
    key = tmp_path / "k"
    cas(None, "keygen", str(key), check=True)
    cas(store, "release", "create", "rel", future, "--key", str(key), check=True)
    cas(store, "get", "rel", str(tmp_path / "out"), check=True)
    assert snapshot(tmp_path / "out") == snapshot(victim)
    cas(store, "get", pid, str(tmp_path / "out2"), check=True)
    assert (tmp_path / "out2" / "payload").read_bytes() == enc
    res = cas(store, "fsck")
    assert res.code == 0, res.out


def test_fsck_names_a_tree_reference_to_a_chunk_typed_object(tmp_path: Path) -> None:
    """The poisoned state itself (a directory entry pointing at a chunk-typed object)."""
    s = Store.init(tmp_path / "store")
    try:
        sub = s.put_raw(ObjType.TREE, encode_tree([]))
        top = s.put_raw(ObjType.TREE, encode_tree([Entry(b"d", Kind.DIR, 0o755, 0, 0,
                                                            None, sub)]))
        s.set_ref("main", top)
    finally:
        s.close()
    path = object_path(tmp_path / "store", sub)
    path.write_bytes(encode(ObjType.CHUNK, encode_tree([])))
    res = cas(tmp_path / "store", "fsck")
    assert res.code == 1 and f"object {sub} is a chunk" in res.out and "expects a tree" in res.out


def test_has_and_lookup_come_from_the_index_without_touching_files(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (tmp_path / "f").write_bytes(random.Random(3).randbytes(50_000))
    oid = ObjectId.parse(cas(store, "put", str(tmp_path / "f"), check=True).out.strip())
    path = object_path(store, oid)
    os.utime(path, (1000, 1000))
    s = Store.open(store)
    try:
        assert s.has(oid)
        e = s.lookup(oid)
        assert e is not None and e.kind == ObjType.CHUNK and e.raw_size == 50_000
        assert e.stored_size == path.stat().st_size
        assert path.stat().st_mtime == 1000  # a lookup is not a reuse
        assert not s.has(ObjectId.of(b"absent"))
        # a reuse (put) refreshes the mtime for gc and keeps the marker in step
        s.put_raw(ObjType.CHUNK, (tmp_path / "f").read_bytes())
    finally:
        s.close()
    assert path.stat().st_mtime > 1000


def test_put_records_a_verified_marker_that_matches_the_file(tmp_path: Path) -> None:
    s = Store.init(tmp_path / "store")
    try:
        oid = s.put_raw(ObjType.CHUNK, b"z" * 30_000)  # recorded in the index by the store
        st = object_path(s.root, oid).stat()
        assert s.lookup(oid).verified_ctime == st.st_ctime_ns
        # the file changes behind the store's back: the marker no longer matches,
        # so the next reuse decodes it (and repairs it)
        path = object_path(s.root, oid)
        path.write_bytes(b"garbage")
        oid2 = s.put_raw(ObjType.CHUNK, b"z" * 30_000)
        assert oid2 == oid
        assert s.lookup(oid).verified_ctime == path.stat().st_ctime_ns  # the repair, recorded
        assert decode(oid, path.read_bytes()) == (ObjType.CHUNK, b"z" * 30_000)
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize("doc", [
    [],
    {"format": "casstore", "version": 1},
    {"format": "casstore", "version": 1, "chunking": {"min": 0, "avg": 0, "max": 0,
                                                       "inline_max": 0},
     "compression": {"level": 3}},
    {"format": "casstore", "version": 1, "chunking": {"min": 4096, "avg": 1024, "max": 65536,
                                                       "inline_max": 0},
     "compression": {"level": 3}},
    {"format": "casstore", "version": 1, "chunking": {"min": -5, "avg": 1024, "max": 65536,
                                                       "inline_max": 0},
     "compression": {"level": 3}},
    {"format": "casstore", "version": 1, "chunking": {"min": "1", "avg": 1024, "max": 65536,
                                                       "inline_max": 0},
     "compression": {"level": "fast"}},
])
def test_bad_casstore_json_is_a_one_line_error(tmp_path: Path, doc: object) -> None:
    store = tmp_path / "store"
    cas(store, "init", check=True)
    (store / "casstore.json").write_text(json.dumps(doc))
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    for args in (("stat",), ("put", str(tmp_path / "f"))):
        res = cas(store, *args)
        assert_one_line_error(res)
        assert res.code == 3, res


def _damage_index(store: Path, how: str) -> None:
    data = store / "index" / "data.mdb"
    if how == "truncated":  # keep the first 5,000 of its 32,768 bytes
        data.write_bytes(data.read_bytes()[:5000])
    elif how == "fifo":
        data.unlink()
        os.mkfifo(data)
    elif how == "garbage-meta":
        raw = bytearray(data.read_bytes())
        raw[16:20] = b"\0\0\0\0"  # LMDB's magic on meta page 0
        data.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "fifo", "garbage-meta"])
def test_a_damaged_index_file_is_one_line_naming_rebuild_index(tmp_path: Path,
                                                              how: str) -> None:
    """LMDB would map a truncated data.mdb (SIGBUS, exit 135) and block on a FIFO; every
    command that opens the index refuses it first, and --rebuild-index recovers."""
    store = tmp_path / "store"
    (tmp_path / "f").write_bytes(random.Random(5).randbytes(40_000))
    cas(store, "init", check=True)
    oid = cas(store, "put", str(tmp_path / "f"), check=True).out.strip()
    assert (store / "index" / "data.mdb").stat().st_size == 32768
    _damage_index(store, how)
    for args in (("stat",), ("put", str(tmp_path / "f"))):
        res = cas(store, *args, timeout=60)
        assert_one_line_error(res)
        assert "--rebuild-index" in res.err and "data.mdb" in res.err, res
        assert res.code == 30, res
    res = cas(store, "fsck", timeout=60)
    assert res.code == 1 and "--rebuild-index" in res.out and "data.mdb" in res.out, res
    assert "Traceback" not in res.err
    cas(store, "fsck", "--rebuild-index", check=True, timeout=60)
    assert cas(store, "put", str(tmp_path / "f"), check=True).out.strip() == oid
    assert cas(store, "fsck", check=True).code == 0


def test_put_replaces_a_folder_planted_at_an_object_path(tmp_path: Path) -> None:
    """FORMAT §3.3: anything at an object path that is not a regular file is damage the
    next put of the same data repairs; a folder, too (a rename cannot replace one)."""
    store = tmp_path / "store"
    data = random.Random(8).randbytes(60_000)
    (tmp_path / "f").write_bytes(data)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the store's")
    oid = cas(store, "put", str(tmp_path / "f"), check=True).out.strip()
    path = _chunk_of(store, data)
    path.unlink()
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "x").write_text("planted")
    os.symlink(outside, path / "link")
    assert cas(store, "fsck").code == 1
    res = cas(store, "put", str(tmp_path / "f"))
    assert res.code == 0 and res.out.strip() == oid, res
    assert path.is_file() and not path.is_symlink()
    assert decode(ObjectId.parse(oid), path.read_bytes()) == (ObjType.CHUNK, data)
    assert (outside / "keep").read_text() == "not the store's"
    assert os.listdir(store / "tmp") == []
    assert cas(store, "fsck").code == 0
