"""Known-bad objects: a corrupt object fails fast after its first failure (never
re-fetched or re-hashed); a missing one is retried only after a back-off."""

from __future__ import annotations

import errno
import json
import os
import random
import time
from pathlib import Path

import mfusepy
import pytest

from casstore.client.fuse.fs import MountInfo, ReleaseFS
from casstore.client.fuse.ops import CasOps
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId
from casstore.sources.knownbad import MISSING_RETRY_S, KnownBad
from casstore.sources.local import LocalSource
from casstore.sources.mem import MemSource
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store
from casstore.view.filecache import FileCache
from casstore.view.reader import TreeReader, root_entry
from casstore.view.vfs import VFS

from fuse_fixtures import Kit, Mounter, run_cas


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _object_ids(store: Path) -> list[ObjectId]:
    return [ObjectId.parse("b3-" + p.parent.name + p.name)
            for p in (store / "objects").glob("*/*") if len(p.name) == 62]


def _flip(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def world(tmp_path: Path):
    rnd = random.Random(11)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"mid": rnd.randbytes(200_000), "big": rnd.randbytes(5 << 20),
             "sub/x": rnd.randbytes(50_000), "ok": rnd.randbytes(60_000)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    store.close()
    plain = TreeReader(LocalSource(tmp_path / "store"))
    # the store's objects in memory: faults are set per object, reads counted
    source = MemSource.copy_of(plain.source, _object_ids(tmp_path / "store"))
    clock = Clock()
    composed = KnownBad(source, clock=clock)  # as casstore.client.fuse.wiring composes it
    cache = FileCache(composed, tmp_path / "cache", 64 << 20, prefetch_min=1 << 20)
    fs = ReleaseFS(VFS(composed, root, info=MountInfo("r", 1, None, str(root)), cache=cache))
    ids = {"root": root, "sub": plain.lookup(root_entry(root), "sub").oid}
    for rel in files:
        e = plain.lookup(root_entry(root), rel)
        ids[rel] = plain.file_chunk_ids(e)
    try:
        yield CasOps(fs), source, clock, files, ids
    finally:
        cache.close()


def _eio(ops: CasOps, call: str, *args) -> None:
    with pytest.raises(mfusepy.FuseOSError) as info:
        getattr(ops, call)(*args)
    assert info.value.errno == errno.EIO


def test_corrupt_chunk_is_not_fetched_again(world) -> None:
    ops, source, _clock, files, ids = world
    (bad,) = ids["mid"]
    source.set_fault(bad, "corrupt")
    _eio(ops, "read", "/mid", 4096, 0, 0)
    assert source.reads[bad] == 1
    for _ in range(3):
        _eio(ops, "read", "/mid", 4096, 8192, 0)
    assert source.reads[bad] == 1  # never re-fetched, never re-hashed
    assert ops.errors["corrupt"] == 4 and ops.errors["eio"] == 4  # still counted
    assert ops.errors["known_bad"] == 3
    assert set(ops.fs.vfs.reader.source.corrupt) == {bad}
    # Even a repaired object stays refused for the life of the mount.
    source.set_fault(bad, None)
    _eio(ops, "read", "/mid", 10, 0, 0)
    assert source.reads[bad] == 1
    assert ops.read("/ok", 100, 0, 0) == files["ok"][:100]  # others still served


def test_corrupt_chunk_of_prefetched_file(world) -> None:
    ops, source, _clock, files, ids = world
    chunks = ids["big"]
    assert len(chunks) >= 3
    bad = chunks[-1]
    source.set_fault(bad, "corrupt")
    size = len(files["big"])
    _eio(ops, "read", "/big", 1 << 16, size - (1 << 16), 0)  # waits for the prefetch
    assert source.reads[bad] == 1  # fetched once, by the prefetch thread
    for _ in range(3):
        _eio(ops, "read", "/big", 4096, size - 4096, 0)
    assert source.reads[bad] == 1
    assert ops.read("/big", 4096, 0, 0) == files["big"][:4096]
    assert ops.fs.cache.stats["chunk_errors"] == 1


def test_corrupt_tree_fails_fast(world) -> None:
    ops, source, _clock, _files, ids = world
    source.set_fault(ids["sub"], "corrupt")
    _eio(ops, "getattr", "/sub/x")
    _eio(ops, "readdir", "/sub", 0)
    _eio(ops, "getattr", "/sub/x")
    assert source.reads[ids["sub"]] == 1
    assert set(ops.fs.vfs.reader.source.corrupt) == {ids["sub"]}
    assert ops.errors["known_bad"] == 2


def test_missing_object_retried_after_backoff(world) -> None:
    ops, source, clock, files, ids = world
    (oid,) = ids["mid"]
    source.set_fault(oid, "missing")
    _eio(ops, "read", "/mid", 100, 0, 0)
    assert source.reads[oid] == 1 and ops.errors["missing"] == 1
    source.set_fault(oid, None)  # e.g. a mirror caught up
    clock.now += MISSING_RETRY_S / 2
    _eio(ops, "read", "/mid", 100, 0, 0)  # still inside the back-off: no fetch
    assert source.reads[oid] == 1 and ops.errors["missing"] == 2
    clock.now += MISSING_RETRY_S / 2 + 0.01
    assert ops.read("/mid", 100, 0, 0) == files["mid"][:100]
    assert source.reads[oid] == 2
    assert not ops.fs.vfs.reader.source.missing


def test_not_found_is_not_remembered(world) -> None:
    ops, _source, _clock, _files, _ids = world
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.getattr("/nope")
    assert info.value.errno == errno.ENOENT
    bad = ops.fs.vfs.reader.source
    assert not bad.corrupt and not bad.missing and ops.errors["eio"] == 0


# -- a real mount -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.fuse
def test_mount_second_read_of_corrupt_object_is_fast(kit: Kit, mounter: Mounter) -> None:
    src = kit.base / "src"
    src.mkdir()
    data = random.Random(3).randbytes(600_000)  # below prefetch_min: read straight
    (src / "f.bin").write_bytes(data)
    (src / "good.bin").write_bytes(b"g" * 70_000)
    root = kit.put(src)
    kit.publish("kb", 1, root)
    reader = TreeReader(kit.store)
    bad = reader.file_chunk_ids(reader.lookup(root_entry(root), "f.bin"))[0]
    path = object_path(kit.store.root, bad)
    good = path.read_bytes()
    _flip(path)
    mp = mounter.mount("kb")
    with pytest.raises(OSError) as info:
        (mp / "f.bin").read_bytes()
    assert info.value.errno == errno.EIO
    os.chmod(path, 0o644)
    path.write_bytes(good)  # a re-fetch would now succeed: it must not happen
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        with open(mp / "f.bin", "rb") as f:
            os.pread(f.fileno(), 4096, 4096)
    assert info.value.errno == errno.EIO
    assert time.monotonic() - t0 < 1.0
    assert (mp / "good.bin").read_bytes() == b"g" * 70_000
    deadline = time.monotonic() + 5
    while True:  # the status file is rewritten right after an error
        st = json.loads(run_cas("--json", "status", "--config", str(kit.config),
                                str(mp)).stdout)
        if st["errors"].get("known_bad", 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st["errors"]["known_bad"] >= 1 and st["errors"]["corrupt"] >= 2
    assert st["bad_objects"]["corrupt"] == [str(bad)]
    assert st["bad_objects"]["fast_failures"] >= 1
    assert mounter.output().count(str(bad)) >= 1
