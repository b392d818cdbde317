"""ObjectCache: the on-disk, verified, LRU object cache in front of any source."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from casstore.errors import FormatError, ObjectCorrupt, ObjectMissing, UnsafeFolder
from casstore.format.objects import ObjectId, ObjType
from casstore.sources import ObjectCache
from casstore.sources.mem import MemSource
from casstore.store.writable import Store, StoreSettings


def _mem(store: Store, oids: list[ObjectId], gate: threading.Event | None = None) -> MemSource:
    """The store's objects in a memory source that counts reads (and can hold them)."""
    return MemSource.copy_of(store.source, oids, gate)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store.init(tmp_path / "store", StoreSettings(durable=False))
    yield s
    s.close()


def _objects(store: Store, n: int, size: int = 10_000) -> list[ObjectId]:
    # random bytes do not compress: stored size ~ size + 16
    return [store.put_raw(ObjType.CHUNK, os.urandom(size)) for _ in range(n)]


def _cached(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_hit_is_served_from_disk_and_verified(store: Store, tmp_path: Path) -> None:
    (oid,) = _objects(store, 1)
    inner = _mem(store, [oid])
    cache = ObjectCache(inner, tmp_path / "c", 1 << 20)
    first = cache.fetch(oid, ObjType.CHUNK)
    assert cache.fetch(oid, ObjType.CHUNK) == first == store.fetch(oid)
    assert inner.reads[oid] == 1 and cache.stats.hits == 1
    assert _cached(tmp_path / "c") == {oid.hex}
    assert cache.read_stored(oid) == store.read_stored(oid)
    assert cache.stored_size(oid) == len(store.read_stored(oid))


def test_quota_and_lru_eviction_order(store: Store, tmp_path: Path) -> None:
    oids = _objects(store, 6)  # each ~10 KB stored
    cache = ObjectCache(store.source, tmp_path / "c", 45_000, low_water=1.0)
    for o in oids[:4]:
        cache.fetch(o)
    assert _cached(tmp_path / "c") == {o.hex for o in oids[:4]}
    cache.fetch(oids[0])  # now the most recently used; oids[1] is the oldest
    cache.fetch(oids[4])  # over quota: evicts the least recently used
    assert _cached(tmp_path / "c") == {o.hex for o in (oids[0], oids[2], oids[3], oids[4])}
    cache.fetch(oids[5])
    assert _cached(tmp_path / "c") == {o.hex for o in (oids[0], oids[3], oids[4], oids[5])}
    assert cache.usage() <= 45_000 and cache.stats.evicted == 2


def test_survives_a_restart_and_verifies_what_it_finds(store: Store, tmp_path: Path) -> None:
    oids = _objects(store, 3)
    cache = ObjectCache(store.source, tmp_path / "c", 1 << 20)
    for o in oids:
        cache.fetch(o)
    cache.close()
    inner = _mem(store, oids)
    again = ObjectCache(inner, tmp_path / "c", 1 << 20)
    assert again.usage() == sum(len(store.read_stored(o)) for o in oids)
    for o in oids:
        assert again.fetch(o) == store.fetch(o)
    assert inner.reads == {} and again.stats.hits == 3
    # a smaller quota after a restart is applied at start
    small = ObjectCache(store.source, tmp_path / "c", 25_000)
    assert small.usage() <= 25_000


def test_concurrent_requests_are_merged_into_one_fetch(store: Store, tmp_path: Path) -> None:
    (oid,) = _objects(store, 1, 500_000)
    gate = threading.Event()
    inner = _mem(store, [oid], gate)
    cache = ObjectCache(inner, tmp_path / "c", 10 << 20)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(oid, ObjType.CHUNK)))
               for _ in range(16)]
    for t in threads:
        t.start()
    # wait until the first thread is inside the inner read, and the others queued
    deadline = threading.Event()
    while not inner.reads and not deadline.wait(0.01):
        pass
    gate.set()
    for t in threads:
        t.join(60)
    assert len(results) == 16 and all(r == store.fetch(oid) for r in results)
    assert inner.reads[oid] == 1


def test_errors_reach_every_waiting_thread_and_are_not_cached(store: Store,
                                                              tmp_path: Path) -> None:
    missing = ObjectId.of(b"not in the store")
    cache = ObjectCache(store.source, tmp_path / "c", 1 << 20)
    for _ in range(2):
        with pytest.raises(ObjectMissing):
            cache.fetch(missing)
    assert _cached(tmp_path / "c") == set()


def test_corrupt_cached_object_is_dropped_and_fetched_again(store: Store,
                                                            tmp_path: Path) -> None:
    (oid,) = _objects(store, 1)
    inner = _mem(store, [oid])
    cache = ObjectCache(inner, tmp_path / "c", 1 << 20)
    good = cache.fetch(oid)
    path = tmp_path / "c" / oid.hex
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # a flipped byte in the cached copy
    path.write_bytes(bytes(data))
    assert cache.fetch(oid) == good
    assert inner.reads[oid] == 2 and cache.stats.dropped == 1
    assert path.read_bytes() == store.read_stored(oid)  # repaired in the cache


def test_flipped_type_in_cached_header_is_refetched(store: Store, tmp_path: Path) -> None:
    """The header is not hashed: a cached copy with a wrong type byte is not trusted."""
    (oid,) = _objects(store, 1)
    cache = ObjectCache(store.source, tmp_path / "c", 1 << 20)
    cache.fetch(oid)
    path = tmp_path / "c" / oid.hex
    data = bytearray(path.read_bytes())
    data[4] = int(ObjType.TREE)
    path.write_bytes(bytes(data))
    assert cache.fetch(oid, ObjType.CHUNK) == store.fetch(oid)
    with pytest.raises(FormatError, match="expected a tree"):
        cache.fetch(oid, ObjType.TREE)  # the source's own type still wins


def test_corrupt_inner_bytes_are_never_cached(store: Store, tmp_path: Path) -> None:
    (oid,) = _objects(store, 1)
    from casstore.format.layout import object_path

    p = object_path(store.root, oid)
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    cache = ObjectCache(store.source, tmp_path / "c", 1 << 20)
    with pytest.raises(ObjectCorrupt):
        cache.fetch(oid)
    assert _cached(tmp_path / "c") == set()


def test_planted_symlink_is_not_followed(store: Store, tmp_path: Path) -> None:
    """A symlink planted in the cache made the daemon write through it."""
    (oid,) = _objects(store, 1)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    folder = tmp_path / "c"
    cache = ObjectCache(store.source, folder, 1 << 20)
    (folder / oid.hex).symlink_to(victim)
    assert cache.fetch(oid) == store.fetch(oid)
    assert victim.read_bytes() == b"precious"
    assert not (folder / oid.hex).is_symlink()
    assert (folder / oid.hex).read_bytes() == store.read_stored(oid)


def test_planted_fifo_does_not_hang(store: Store, tmp_path: Path) -> None:
    (oid,) = _objects(store, 1)
    folder = tmp_path / "c"
    cache = ObjectCache(store.source, folder, 1 << 20)
    os.mkfifo(folder / oid.hex)
    assert cache.fetch(oid) == store.fetch(oid)  # dropped, fetched, cached
    assert (folder / oid.hex).is_file()


def test_folder_created_private(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "deep" / "cache"
    ObjectCache(store.source, folder, 1 << 20).close()
    assert (folder.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o722])
def test_refuses_group_or_other_writable_folder(tmp_path: Path, store: Store, mode: int) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(UnsafeFolder, match="writable by group or others"):
        ObjectCache(store.source, folder, 1 << 20)


def test_refuses_folder_of_another_user(tmp_path: Path, store: Store) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    os.chown(folder, 12345, 12345)
    with pytest.raises(UnsafeFolder, match="owned by uid 12345"):
        ObjectCache(store.source, folder, 1 << 20)


def test_file_of_another_user_is_not_trusted(tmp_path: Path, store: Store) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    (oid,) = _objects(store, 1)
    inner = _mem(store, [oid])
    cache = ObjectCache(inner, tmp_path / "c", 1 << 20)
    cache.fetch(oid)
    os.chown(tmp_path / "c" / oid.hex, 12345, 12345)
    cache.fetch(oid)
    assert inner.reads[oid] == 2


def test_two_instances_share_one_folder_and_one_quota(store: Store, tmp_path: Path) -> None:
    """As two processes on a node would: the folder is the only shared state."""
    oids = _objects(store, 8)
    a_inner, b_inner = _mem(store, oids), _mem(store, oids)
    a = ObjectCache(a_inner, tmp_path / "c", 60_000)
    b = ObjectCache(b_inner, tmp_path / "c", 60_000)
    for o in oids[:4]:
        a.fetch(o)
    for o in oids[:4]:
        assert b.fetch(o) == store.fetch(o)
    assert b_inner.reads == {}  # b found a's files
    for o in oids[4:]:
        b.fetch(o)  # b's rescans count a's files too
    assert b.usage() <= 60_000
    assert a.fetch(oids[7]) == store.fetch(oids[7]) and oids[7] not in a_inner.reads


def test_refuses_a_symlink_to_a_private_folder_elsewhere(tmp_path: Path, store: Store) -> None:
    """``cache_dir/objects`` as a symlink to a folder of ours (0700, same owner): the
    target passes every ownership check, but objects must not land there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "objects").symlink_to(elsewhere)
    with pytest.raises(UnsafeFolder, match="not a directory"):
        ObjectCache(store.source, tmp_path / "objects", 1 << 20)
    assert list(elsewhere.iterdir()) == []
