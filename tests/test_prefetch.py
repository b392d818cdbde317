"""Prefetch lists (FORMAT §6.5): format, recording model, storing in a signed release,
replay into a source (counted), and a real mount whose `cas status` shows the replay."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from casstore.client.replay import Replay
from casstore.errors import FormatError, ObjectCorrupt
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId
from casstore.format.trees import Storage
from casstore.releases.prefetch import (
    DATA,
    META,
    AccessRecorder,
    PrefetchList,
    build_list,
    load_accesses,
    load_list,
    store_list,
)
from casstore.releases.release import Release, load_secret, load_verified, sign
from casstore.sources import ObjectCache
from casstore.sources.base import ObjectSource
from casstore.sources.local import LocalSource
from casstore.sources.mem import MemSource
from casstore.store.snapshot import Snapshot
from casstore.view.reader import TreeReader
from casstore.view.vfs import VFS

from fuse_fixtures import Kit, Mounter, run_cas


def make_tree(root: Path) -> None:
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "lib" / "big.so").write_bytes(os.urandom(3 << 20) + bytes(3 << 20))  # a blob
    (root / "lib" / "deep" / "a.jl").write_text("module A end\n" * 50)
    (root / "lib" / "deep" / "b.jl").write_text("module B end\n" * 40)
    (root / "src").mkdir()
    (root / "src" / "unread.txt").write_text("never read\n" * 100)
    os.symlink("lib/big.so", root / "link")


def publish_with_lists(kit: Kit, root: ObjectId, accesses: list, revision: int = 1,
                       ) -> tuple[Release, PrefetchList]:
    """A signed release whose meta names a prefetch list built from ``accesses``."""
    vfs = VFS(TreeReader(kit.store), root)
    plist = build_list(vfs, accesses)
    with kit.store.lock(), Snapshot(kit.store) as snap:
        tid = store_list(snap, plist)
    now = int(time.time())
    rel = Release("app", revision, str(root), now - 10, now + 3600, {}, None,
                  {"prefetch": {"": str(tid)}})
    kit.store.write_release("app", revision, sign(rel, load_secret(kit.key)))
    return rel, plist


@pytest.fixture
def tree(kit: Kit) -> ObjectId:
    src = kit.base / "tree"
    make_tree(src)
    return kit.put(src)


ACCESSES = [("lib", META), ("lib/deep/a.jl", DATA), ("lib/big.so", DATA), ("link", DATA),
            ("missing/file", META)]


def _object_ids(store: Path) -> list[ObjectId]:
    return [ObjectId.parse("b3-" + p.parent.name + p.name)
            for p in (store / "objects").glob("*/*") if len(p.name) == 62]


def replay_source(kit: Kit, batch: bool) -> tuple[ObjectSource, MemSource, list[int]]:
    """The kit's objects in a memory source that counts reads; with ``batch``, behind a
    real object cache, whose batch method (``prefetch``) records each batch's size."""
    mem = MemSource.copy_of(LocalSource(kit.store.root), _object_ids(kit.store.root))
    if not batch:
        return mem, mem, []
    cache = ObjectCache(mem, kit.base / f"objcache-{len(list(kit.base.glob('objcache-*')))}",
                        1 << 30)
    batches: list[int] = []
    real = cache.prefetch

    def prefetch(oids: list[ObjectId]):
        batches.append(len(oids))
        return real(oids)

    cache.prefetch = prefetch  # type: ignore[method-assign]
    return cache, mem, batches


# -- format -----------------------------------------------------------------------
def test_list_round_trips_and_decode_is_strict() -> None:
    a, b = ObjectId.of(b"a"), ObjectId.of(b"b")
    pl = PrefetchList("x86-64", str(a), None, [(a, 10), (b, 20)], [("x/y", [0, 1]), ("z", [0])])
    back = PrefetchList.decode(pl.encode())
    assert back == pl and back.total_bytes() == 30
    doc = json.loads(pl.encode())
    for bad in ({**doc, "format": "other"}, {**doc, "files": [["x", [2]]]},
                {**doc, "objects": [["b3-zz", 1]]}, {**doc, "objects": [[str(a), -1]]},
                {**doc, "objects": [[str(a), True]]}, {**doc, "level": 3}):
        with pytest.raises(FormatError):
            PrefetchList.decode(json.dumps(bad).encode())
    with pytest.raises(FormatError):
        PrefetchList.decode(b"\xff not json")


def test_recorder_keeps_first_access_order_and_upgrades_to_data(tmp_path: Path) -> None:
    r = AccessRecorder()
    for path, how in [("/a", META), ("/b", DATA), ("/a", DATA), ("/", META), ("/b", META)]:
        r.note(path, how)
    assert r.accesses() == [("a", DATA), ("b", DATA)]
    r.save(tmp_path / "rec.json")
    assert load_accesses(tmp_path / "rec.json") == r.accesses()
    (tmp_path / "bad.json").write_text('{"accesses": [["a", "write"]]}')
    with pytest.raises(FormatError):
        load_accesses(tmp_path / "bad.json")


def test_build_list_names_trees_and_data_objects_in_order(kit: Kit, tree: ObjectId) -> None:
    vfs = VFS(TreeReader(kit.store), tree)
    pl = build_list(vfs, ACCESSES)
    oids = pl.oids()
    assert len(set(oids)) == len(oids) and oids[0] == tree  # the root tree first
    files = dict(pl.files)
    assert list(files) == [p for p, _h in ACCESSES]  # first-access order kept
    big = vfs.lookup("/lib/big.so").entry
    a = vfs.lookup("/lib/deep/a.jl").entry
    assert big.storage == Storage.BLOB
    chunks = vfs.reader.file_chunk_ids(big)
    big_objs = [oids[i] for i in files["lib/big.so"]]
    assert big_objs[:2] == [tree, vfs.lookup("/lib").entry.oid]
    assert big_objs[2:] == [big.oid, *chunks]  # manifest, then its chunks in order
    a_objs = [oids[i] for i in files["lib/deep/a.jl"]]
    assert vfs.lookup("/lib/deep").entry.oid in a_objs and a.oid in a_objs
    assert [oids[i] for i in files["link"]] == [tree]  # a symlink needs its trees only
    assert [oids[i] for i in files["missing/file"]] == [tree]
    unread = vfs.lookup("/src/unread.txt").entry.oid
    assert unread not in oids and vfs.lookup("/src").entry.oid not in oids
    assert all(n > 0 for _o, n in pl.objects)


# -- in the signed release -----------------------------------------------------------
def test_list_is_in_the_signed_release_and_a_tampered_list_is_refused(
        kit: Kit, tree: ObjectId) -> None:
    rel, plist = publish_with_lists(kit, tree, ACCESSES)
    pub = load_secret(kit.key).verify_key.encode().hex()
    got = load_verified(kit.store, "app", [pub], None)
    assert set(got.prefetch_ids()) == {""}
    src = LocalSource(kit.store.root)
    assert load_list(src, got, None) == plist
    # The chunk holding prefetch.json: overwrite it with another valid-looking list.
    tid = got.prefetch_ids()[""]
    chunk = TreeReader(src).dir(tid).entries[0].oid
    other = PrefetchList(None, rel.root, None, [], []).encode()
    path = object_path(kit.store.root, chunk)
    os.chmod(path, 0o644)
    from casstore.format.objects import ObjType, encode
    path.write_bytes(encode(ObjType.CHUNK, other))
    with pytest.raises(ObjectCorrupt):
        load_list(src, got, None)
    replay = Replay(lambda: load_list(src, got, None), src)
    replay.run()  # never raises
    assert replay.summary()["state"] == "failed" and replay.summary()["done"] == 0


def test_list_for_other_trees_is_ignored(kit: Kit, tree: ObjectId) -> None:
    rel, _pl = publish_with_lists(kit, tree, ACCESSES)
    moved = Release(rel.name, 2, str(ObjectId.of(b"elsewhere")), rel.created, rel.expires,
                    {}, None, rel.meta)
    with pytest.raises(FormatError, match="other trees"):
        load_list(LocalSource(kit.store.root), moved, None)
    assert load_list(LocalSource(kit.store.root),
                     Release("x", 1, rel.root, 0, 1, {}, None, {}), None) is None


# -- replay -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("batch", [True, False])
def test_replay_fetches_exactly_the_listed_objects(kit: Kit, tree: ObjectId,
                                                   batch: bool) -> None:
    rel, plist = publish_with_lists(kit, tree, ACCESSES)
    source, mem, batches = replay_source(kit, batch)
    replay = Replay(lambda: plist, source, batch=2)
    replay.run()
    s = replay.summary()
    assert sorted(mem.reads.elements(), key=str) == sorted(plist.oids(), key=str)
    assert s["state"] == "done" and s["done"] == s["total"] == len(plist.objects)
    assert s["errors"] == 0 and s["bytes_done"] == s["bytes_total"] == plist.total_bytes()
    if batch:
        assert batches and max(batches) <= 2


def test_replay_skips_what_whole_file_copies_fetch(kit: Kit, tree: ObjectId) -> None:
    _rel, plist = publish_with_lists(kit, tree, ACCESSES)
    vfs = VFS(TreeReader(kit.store), tree)
    big = vfs.lookup("/lib/big.so").entry
    covered = {big.oid, *vfs.reader.file_chunk_ids(big)}
    warmed = []

    def warm(path, oids):
        if path == "lib/big.so" and big.oid in oids:
            warmed.append(path)
            return covered
        return set()

    source, mem, _batches = replay_source(kit, batch=False)
    replay = Replay(lambda: plist, source, warm)
    replay.run()
    assert warmed == ["lib/big.so"] and replay.summary()["files_warmed"] == 1
    assert set(mem.reads) == set(plist.oids()) - covered
    assert replay.summary()["done"] == len(plist.objects)


def test_a_missing_listed_object_is_counted_not_fatal(kit: Kit, tree: ObjectId) -> None:
    _rel, plist = publish_with_lists(kit, tree, ACCESSES)
    gone = plist.oids()[-1]
    for batch in (True, False):
        source, mem, _batches = replay_source(kit, batch)
        mem.set_fault(gone, "missing")
        replay = Replay(lambda: plist, source)
        replay.run()
        s = replay.summary()
        assert s["state"] == "done" and s["errors"] == 1 and s["done"] == s["total"]


# -- real mounts --------------------------------------------------------------------
def _status(kit: Kit, mp: Path) -> dict:
    p = run_cas("--json", "status", "--config", str(kit.config), str(mp))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _wait_prefetch(kit: Kit, mp: Path) -> dict:
    deadline = time.monotonic() + 60
    while True:
        st = _status(kit, mp)
        if st.get("prefetch", {}).get("state") in ("done", "failed", "none"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_replays_the_list_and_status_reaches_total(kit: Kit, tree: ObjectId,
                                                         mounter: Mounter) -> None:
    _rel, plist = publish_with_lists(kit, tree, ACCESSES)
    mp = mounter.mount("app")
    st = _wait_prefetch(kit, mp)
    pf = st["prefetch"]
    assert pf["state"] == "done" and pf["done"] == pf["total"] == len(plist.objects) > 3
    assert pf["errors"] == 0 and pf["files_warmed"] == 1  # big.so: a whole-file copy
    assert st["cache"]["prefetches"] >= 1
    text = run_cas("status", "--config", str(kit.config), str(mp)).stdout
    assert f"prefetch:   done: {pf['total']}/{pf['total']} objects" in text
    assert (mp / "lib" / "big.so").read_bytes() == (kit.base / "tree/lib/big.so").read_bytes()


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_survives_a_list_naming_a_missing_object(kit: Kit, tree: ObjectId,
                                                       mounter: Mounter) -> None:
    _rel, plist = publish_with_lists(kit, tree, [("src/unread.txt", DATA), *ACCESSES])
    unread = plist.oids()[plist.files[0][1][-1]]
    object_path(kit.store.root, unread).unlink()
    mp = mounter.mount("app")
    pf = _wait_prefetch(kit, mp)["prefetch"]
    assert pf["state"] == "done" and pf["errors"] == 1 and pf["done"] == pf["total"]
    assert (mp / "lib" / "deep" / "a.jl").read_text().startswith("module A")


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_records_accesses_in_first_access_order(kit: Kit, tree: ObjectId,
                                                      mounter: Mounter) -> None:
    publish_with_lists(kit, tree, ACCESSES)
    rec = kit.base / "rec.json"
    mp = mounter.mount("app", "--record-access", str(rec))
    assert _status(kit, mp)["prefetch"]["state"] == "off"  # recording mounts do not replay
    (mp / "lib" / "deep" / "b.jl").read_bytes()
    os.readlink(mp / "link")
    (mp / "lib" / "big.so").read_bytes()[:10]
    r = run_cas("umount", "--config", str(kit.config), str(mp))
    assert r.returncode == 0, r.stderr
    acc = load_accesses(rec)
    data = [p for p, h in acc if h == DATA]
    assert data == ["lib/deep/b.jl", "link", "lib/big.so"]
    assert ("lib", META) in acc and acc.index(("lib", META)) < acc.index(("lib/deep/b.jl", DATA))
    assert not any(p.startswith("src") for p, _h in acc)


def test_gc_and_fsck_keep_the_list_with_its_release(kit: Kit, tree: ObjectId) -> None:
    from helpers import cas

    rel, plist = publish_with_lists(kit, tree, ACCESSES)
    kit.store.close()
    rep = cas(kit.store.root, "--json", "gc", "--grace", "0s", check=True)
    assert "prefetch" not in rep.err
    assert load_list(LocalSource(kit.store.root), rel, None) == plist
    assert cas(kit.store.root, "fsck").code == 0


def test_a_failing_batch_is_counted_and_the_rest_still_fetched(kit: Kit, tree: ObjectId) -> None:
    _rel, plist = publish_with_lists(kit, tree, ACCESSES)
    source, mem, _batches = replay_source(kit, batch=True)
    real, calls = source.prefetch, []  # type: ignore[attr-defined]

    def flaky(oids):
        calls.append(len(oids))
        if len(calls) == 1:
            raise TimeoutError("server went away")
        return real(oids)

    source.prefetch = flaky  # type: ignore[attr-defined]
    replay = Replay(lambda: plist, source, batch=2)
    replay.run()
    s = replay.summary()
    assert s["state"] == "done" and s["errors"] == 2 and s["done"] == s["total"]
    assert set(mem.reads) == set(plist.oids()[2:])
