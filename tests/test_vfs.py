"""The filesystem model (casstore.view.vfs) without FUSE: threads, memory, depth, the cache.

Expected values come from the files on disk that were put, never from the code
under test.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from casstore.errors import NotFound, UnsafeFolder
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Entry, Kind, Storage, encode_tree
from casstore.sources import LocalSource
from casstore.sources.knownbad import KnownBad
from casstore.sources.mem import MemSource
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store
from casstore.view.filecache import FileCache
from casstore.view.reader import TreeReader
from casstore.view.vfs import VFS, ViewInfo

from helpers import cas


# -- a varied tree with an overlay ---------------------------------------------------
def _write_tree(root: Path, rnd: random.Random, files: int) -> None:
    for i in range(files):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.choice([0, 10, 3000, 70_000, 300_000])
        (d / f"f{i}.bin").write_bytes(rnd.randbytes(size))
    (root / "big.so").write_bytes(rnd.randbytes(5 << 20))
    os.symlink("d1/e1", root / "link")
    (root / "d0" / "x.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "d0" / "x.sh", 0o755)


def _expected(base: Path, over: Path) -> dict[str, tuple]:
    """path -> ("d",) | ("l", target) | ("f", bytes, mode, from_overlay), merged as
    FORMAT §6.3 says: overlay files win, directories present in both merge."""
    out: dict[str, tuple] = {}

    def scan(top: Path, overlay: bool) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                rel = str(p.relative_to(top))
                if p.is_symlink():
                    out[rel] = ("l", os.readlink(p).encode(), overlay)
                elif p.is_dir():
                    if overlay and out.get(rel, ("?",))[0] != "d":
                        # An overlay dir over a non-dir (or nothing) replaces it whole.
                        for k in [k for k in out if k.startswith(rel + "/")]:
                            del out[k]
                    out[rel] = ("d", overlay and out.get(rel, ("?",))[0] != "d")
                else:
                    if overlay and rel in out and out[rel][0] == "d":
                        for k in [k for k in out if k.startswith(rel + "/")]:
                            del out[k]
                    out[rel] = ("f", p.read_bytes(), stat.S_IMODE(p.stat().st_mode), overlay)

    scan(base, False)
    scan(over, True)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[VFS, dict[str, tuple]]]:
    rnd = random.Random(7)
    base, over = tmp_path / "base", tmp_path / "over"
    _write_tree(base, rnd, 120)
    (over / "d1" / "e1").mkdir(parents=True)
    (over / "d1" / "e1" / "f4.bin").write_bytes(b"variant bytes\n" * 999)  # replaces
    (over / "d1" / "e1" / "new.bin").write_bytes(b"only in the overlay\n")  # adds
    (over / "d2").mkdir()
    (over / "d2" / "deep").mkdir()
    (over / "d2" / "deep" / "v.ji").write_bytes(rnd.randbytes(200_000))  # merges
    (over / "big.so").write_bytes(rnd.randbytes(6 << 20))  # a large variant file
    store = Store.open(tmp_path / "store", create=True)
    root, ov = put_paths(store, [base]), put_paths(store, [over])
    store.close()
    source = KnownBad(LocalSource(tmp_path / "store"))
    cache = FileCache(source, tmp_path / "cache", 64 << 20, prefetch_min=1 << 20)
    vfs = VFS(source, root, ov, info=ViewInfo("r", 1, "x86-64-v3", str(root)), cache=cache)
    try:
        yield vfs, _expected(base, over)
    finally:
        cache.close()


def _check(vfs: VFS, rel: str, want: tuple, rnd: random.Random) -> None:
    node = vfs.lookup("/" + rel if rnd.random() < 0.5 else rel.encode())
    s = vfs.stat(node)
    if want[0] == "d":
        assert stat.S_ISDIR(s.mode), rel
        names = [n.decode() for n in vfs.names(node)]
        assert names == sorted(names)
        return
    if want[0] == "l":
        assert stat.S_ISLNK(s.mode) and vfs.readlink(node) == want[1], rel
        return
    data = want[1]
    assert stat.S_ISREG(s.mode) and s.size == len(data), rel
    assert stat.S_IMODE(s.mode) == want[2], rel
    off = rnd.randrange(0, max(1, len(data)))
    n = rnd.choice([1, 4096, 131072, 1 << 20])
    assert vfs.read(node, off, n) == data[off:off + n], rel
    assert (b"user.cas.variant" in [k.encode() for k in vfs.xattrs(node, False)]) == want[3]


@pytest.mark.slow
def test_vfs_from_eight_threads(world) -> None:
    """8 threads of random lookups/stat/read/listdir over one VFS: every answer right."""
    vfs, expected = world
    paths = sorted(expected)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(400):
                rel = rnd.choice(paths)
                _check(vfs, rel, expected[rel], rnd)
                if rnd.random() < 0.05:
                    with pytest.raises(NotFound):
                        vfs.lookup(f"/{rel}/nope" if expected[rel][0] == "d" else "/zz")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    listing = {p.decode(): n for p, n in vfs.walk(vfs.root)}
    assert set(listing) == set(expected)
    assert vfs.cache is not None and vfs.cache.stats["hits"] > 0


@pytest.mark.slow
def test_listdir_merges_in_byte_order(world) -> None:
    vfs, expected = world
    for rel in ("d1/e1", "d2", "d2/deep", ""):
        node = vfs.lookup(rel)
        want = sorted(k.rpartition("/")[2] for k in expected
                      if k.rpartition("/")[0] == rel)
        assert [n.decode() for n in vfs.names(node)] == want
        assert [c.entry.name.decode() for c in vfs.listdir(node)] == want
        subdirs = sum(1 for k in want if expected[f"{rel}/{k}".lstrip("/")][0] == "d")
        assert vfs.stat(node).nlink == 2 + subdirs


# -- memory --------------------------------------------------------
@pytest.mark.slow
def test_big_tree_memory_per_entry() -> None:
    """A 200k-entry tree kept decoded costs little more than its own bytes."""
    n = 200_000
    src = MemSource()
    raw = encode_tree(Entry(f"file-{i:07d}.jl".encode(), Kind.FILE, 0o644, 0, 0,
                            Storage.INLINE) for i in range(n))
    tid = src.put(ObjType.TREE, raw)
    del raw
    reader = TreeReader(src, tree_cache_bytes=1 << 30)
    tracemalloc.start()
    try:
        vfs = VFS(reader, tid)
        names = vfs.names(vfs.root)
        assert len(names) == n and names[123] == b"file-0000123.jl"
        del names
        node = vfs.lookup("/file-0199999.jl")
        assert node.entry.size == 0 and vfs.stat(vfs.root).nlink == 2
        retained, peak = tracemalloc.get_traced_memory()
        print(f"retained {retained / n:.1f} B/entry, peak {peak / n:.1f} B/entry")
    finally:
        tracemalloc.stop()
    # Before: 245 bytes an entry retained, 271 at peak (an Entry, its name, a dict
    # slot and a list slot).  Now: the raw entry (~37 bytes here) plus 5.
    assert retained / n < 80, f"{retained / n:.0f} bytes retained per entry"
    assert peak / n < 150, f"{peak / n:.0f} bytes peak per entry"


def test_tree_cache_is_bounded_by_bytes() -> None:
    """The cache weighs what a decoded tree really costs, in either form."""
    from casstore.view.reader import SMALL_DIR

    src = MemSource()
    n = SMALL_DIR + 1000  # compact form
    ids = [src.put(ObjType.TREE, encode_tree(Entry(f"n{i}-{j}".encode(), Kind.FILE, 0o644,
                                                   0, 0, Storage.INLINE) for j in range(n)))
           for i in range(20)]
    reader = TreeReader(src, tree_cache_bytes=400_000)
    for tid in ids:
        assert len(reader.dir(tid)) == n
    assert 0 < reader.trees.weight <= 400_000
    small = reader.dir(src.put(ObjType.TREE, encode_tree(
        Entry(f"s{j}".encode(), Kind.FILE, 0o644, 0, 0, Storage.INLINE) for j in range(100))))
    assert small.nbytes > 100 * 300  # kept decoded, and weighed as such


# -- depth --------------------------------------------------
def _deep_tree(store: Store, depth: int) -> ObjectId:
    """A chain of ``depth`` directories built from objects directly (no disk walk)."""
    leaf = encode_tree([Entry(b"end.txt", Kind.FILE, 0o644, 3, 0, Storage.INLINE,
                              data=b"end")])
    oid = store.put_raw(ObjType.TREE, leaf)
    for _ in range(depth):
        oid = store.put_raw(ObjType.TREE, encode_tree(
            [Entry(b"d", Kind.DIR, 0o755, 0, 0, None, oid)]))
    return oid


@pytest.mark.slow
def test_ls_recursive_on_a_1500_level_tree(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store", create=True)
    root = _deep_tree(store, 1500)
    store.close()
    res = cas(tmp_path / "store", "ls", "-R", str(root))
    assert res.code == 0, res.err[-500:]
    lines = res.out.splitlines()
    assert len(lines) == 1501 and lines[-1] == "d/" * 1500 + "end.txt"
    vfs = VFS(LocalSource(tmp_path / "store"), root)
    node = vfs.lookup("d/" * 1500 + "end.txt")
    assert vfs.read(node, 0, 10) == b"end"


# -- ls escapes names ----------------------------------------------------------------
def test_ls_escapes_control_characters(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil\nname").write_bytes(b"1")
    (src / "term\x1b[2Jx").write_bytes(b"2")
    (src / "plain").write_bytes(b"3")
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    store.close()
    res = cas(tmp_path / "store", "ls", str(root))
    assert res.code == 0, res.err
    assert "\x1b" not in res.out
    assert res.out.splitlines() == ["evil\\nname", "plain", "term\\x1b[2Jx"]


# -- the file cache over a composed source -------------------------
@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, ObjectId, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(5).randbytes(6 << 20)
    (src / "big.so").write_bytes(data)
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    store.close()
    return tmp_path, root, data


def _open(tmp: Path, root: ObjectId) -> tuple[VFS, FileCache]:
    source = KnownBad(LocalSource(tmp / "store"))
    cache = FileCache(source, tmp / "cache", 64 << 20, prefetch_min=1 << 20)
    return VFS(source, root, cache=cache), cache


def _read_all(vfs: VFS, path: str) -> bytes:
    return b"".join(vfs.iter_bytes(vfs.lookup(path), 1 << 20))


def test_cache_never_writes_through_a_planted_symlink(big) -> None:
    tmp, root, data = big
    vfs, cache = _open(tmp, root)
    oid = vfs.lookup("big.so").entry.oid
    cache.close()
    victim = tmp / "victim"
    victim.write_bytes(b"precious\n")
    (tmp / "cache" / "files" / oid.hex).symlink_to(victim)
    vfs, cache = _open(tmp, root)
    try:
        assert _read_all(vfs, "big.so") == data
        assert cache.stats["hits"] > 0
    finally:
        cache.close()
    assert victim.read_bytes() == b"precious\n"


def test_bytes_edited_into_the_cache_never_reach_readers(big) -> None:
    tmp, root, data = big
    vfs, cache = _open(tmp, root)
    try:
        assert _read_all(vfs, "big.so") == data  # the copy is complete now
        deadline = 200
        files = tmp / "cache" / "files"
        while not any(files.iterdir()) and deadline:  # the kept copy is renamed in
            threading.Event().wait(0.05)
            deadline -= 1
        for p in files.iterdir():  # an attacker edits every cached file in place
            with open(p, "r+b") as f:
                f.write(b"EVIL" * 1024)
        assert _read_all(vfs, "big.so") == data
        assert cache.stats["hits"] > 0
    finally:
        cache.close()
    vfs, cache = _open(tmp, root)  # after a restart the edited copy is re-verified
    try:
        assert _read_all(vfs, "big.so") == data
    finally:
        cache.close()


def test_cache_file_of_another_owner_is_refused(big) -> None:
    tmp, root, data = big
    vfs, cache = _open(tmp, root)
    oid = vfs.lookup("big.so").entry.oid
    cache.close()
    planted = tmp / "cache" / "files" / oid.hex
    planted.unlink(missing_ok=True)
    planted.write_bytes(data)  # right bytes, wrong owner
    os.chown(planted, 65534, 65534)
    vfs, cache = _open(tmp, root)
    try:
        assert _read_all(vfs, "big.so") == data
        assert cache.stats["rejected_files"] == 1
    finally:
        cache.close()


class _SlowSource:
    """A local source whose chunk fetches take a while; counts them in flight, and
    fails one chosen chunk the first time it is fetched."""

    def __init__(self, inner: LocalSource, fail: ObjectId | None = None) -> None:
        self.inner, self.fail = inner, fail
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        if expect != ObjType.CHUNK:
            return self.inner.fetch(oid, expect)
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            threading.Event().wait(0.05)
            if oid == self.fail:
                self.fail = None
                from casstore.errors import ObjectCorrupt

                raise ObjectCorrupt(f"object {oid} failed verification (test)")
            return self.inner.fetch(oid, expect)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("fail_one", [False, True])
def test_whole_file_copy_fills_several_chunks_at_once(big, fail_one: bool) -> None:
    """Chunks are fetched several at a time; a failed chunk leaves the copy incomplete
    (never served from unwritten bytes) and its reads go to the source again."""
    tmp, root, data = big
    local = LocalSource(tmp / "store")
    layout = TreeReader(local).layout(VFS(local, root).lookup("big.so").entry)
    assert len(layout.oids) >= 3
    source = _SlowSource(local, layout.oids[1] if fail_one else None)
    cache = FileCache(source, tmp / "cache", 64 << 20, prefetch_min=1 << 20)  # type: ignore[arg-type]
    try:
        vfs = VFS(source, root, cache=cache)  # type: ignore[arg-type]
        node = vfs.lookup("big.so")
        assert vfs.read(node, 0, 10) == data[:10]
        copy = next(iter(cache.copies.values()))
        assert copy.thread is not None
        copy.thread.join(30)
        assert source.peak > 1
        assert copy.complete is not fail_one and cache.stats["chunk_errors"] == int(fail_one)
        assert _read_all(vfs, "big.so") == data  # the failed chunk: from the source again
    finally:
        cache.close()


class _CountingSource:
    """A local source that counts its chunk fetches."""

    def __init__(self, inner: LocalSource, delay: float = 0.0) -> None:
        self.inner, self.chunks, self.delay = inner, Counter(), delay

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        if expect == ObjType.CHUNK:
            self.chunks[oid] += 1
            threading.Event().wait(self.delay)
        return self.inner.fetch(oid, expect)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_repeated_chunk_is_copied_inside_the_copy_not_fetched_again(tmp_path: Path,
                                                                      workers: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(9).randbytes(3 << 20) * 4  # the same chunks, four times
    (src / "big.so").write_bytes(data)
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    store.close()
    local = LocalSource(tmp_path / "store")
    layout = TreeReader(local).layout(VFS(local, root).lookup("big.so").entry)
    assert len(set(layout.oids)) < len(layout.oids)
    source = _CountingSource(local, delay=0.02)  # workers meet a repeat being fetched
    cache = FileCache(source, tmp_path / "cache", 64 << 20, prefetch_min=1 << 20,  # type: ignore[arg-type]
                      workers=workers)
    try:
        vfs = VFS(source, root, cache=cache)  # type: ignore[arg-type]
        assert vfs.read(vfs.lookup("big.so"), 0, 10) == data[:10]
        copy = next(iter(cache.copies.values()))
        assert copy.thread is not None
        copy.thread.join(30)
        assert copy.complete
        assert set(source.chunks) == set(layout.oids) and max(source.chunks.values()) == 1
        assert _read_all(vfs, "big.so") == data
    finally:
        cache.close()


def test_a_read_ahead_of_the_copy_fills_its_chunk_into_the_copy(big) -> None:
    """A read far past the copy's workers fetches its chunk once, into the copy, and
    is served from it; the workers skip that chunk (no second fetch or verify)."""
    tmp, root, data = big
    local = LocalSource(tmp / "store")
    layout = TreeReader(local).layout(VFS(local, root).lookup("big.so").entry)
    assert len(layout.oids) >= 3
    source = _CountingSource(local, delay=0.05)
    cache = FileCache(source, tmp / "cache", 64 << 20, prefetch_min=1 << 20,  # type: ignore[arg-type]
                      workers=1)
    try:
        vfs = VFS(source, root, cache=cache)  # type: ignore[arg-type]
        node = vfs.lookup("big.so")
        last = layout.starts[-1]
        assert vfs.read(node, last, 4096) == data[last:last + 4096]
        assert cache.stats["fallbacks"] == 0 and cache.stats["hits"] == 1
        copy = next(iter(cache.copies.values()))
        assert copy.thread is not None
        copy.thread.join(30)
        assert copy.complete
        assert set(source.chunks) == set(layout.oids) and max(source.chunks.values()) == 1
        assert _read_all(vfs, "big.so") == data
    finally:
        cache.close()


@pytest.mark.parametrize("mode", [0o777, 0o757, 0o775])
def test_cache_folder_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(UnsafeFolder):
        FileCache(KnownBad(MemSource()), folder, 1 << 20)


def test_cache_folder_is_created_private(tmp_path: Path) -> None:
    cache = FileCache(MemSource(), tmp_path / "new" / "cache", 1 << 20)
    cache.close()
    for p in (tmp_path / "new" / "cache", tmp_path / "new" / "cache" / "files"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700


@pytest.mark.parametrize("small_dir", [0, 2048])
def test_compact_decode_agrees_with_decode_tree(monkeypatch, small_dir: int) -> None:
    """Dir.decode's fast validation accepts and refuses exactly what decode_tree does,
    in the compact form (0) and the decoded small-tree form."""
    from casstore.errors import FormatError
    from casstore.format.trees import decode_tree
    from casstore.view import reader
    from casstore.view.reader import Dir

    monkeypatch.setattr(reader, "SMALL_DIR", small_dir)

    oid = ObjectId.of(b"x")
    entries = [Entry(b"a-dir", Kind.DIR, 0o755, 0, 5, None, oid),
               Entry(b"b-inline", Kind.FILE, 0o644, 3, 6, Storage.INLINE, data=b"abc"),
               Entry(b"c-chunk", Kind.FILE, 0o755, 9, 7, Storage.CHUNK, oid),
               Entry(b"d-packed", Kind.FILE, 0o644, 4, 8, Storage.PACKED, oid, offset=12),
               Entry(b"e-link", Kind.SYMLINK, 0o777, 6, 9, data=b"target"),
               Entry(b"f-blob", Kind.FILE, 0o644, 99, 10, Storage.BLOB, oid)]
    good = encode_tree(entries)
    d = Dir.decode(good)
    assert d.entries == decode_tree(good) and d.names() == [e.name for e in entries]
    assert [d.get(e.name) for e in entries] == entries and d.get(b"zz") is None
    rnd = random.Random(3)
    agreed = 0
    for i in range(3000):
        raw = bytearray(good)
        if i % 3 == 0:
            raw = raw[:rnd.randrange(len(raw))]
        else:
            for _ in range(rnd.randint(1, 3)):
                raw[rnd.randrange(8, len(raw))] = rnd.randrange(256)
        raw = bytes(raw)
        try:
            want = decode_tree(raw)
        except FormatError:
            want = None
        try:
            got = Dir.decode(raw).entries
        except FormatError:
            got = None
        assert got == want, raw
        agreed += want is None
    assert agreed > 1000  # most mutations were refused, by both


def test_file_with_a_trees_id_has_no_children(tmp_path: Path) -> None:
    """A file whose bytes equal a tree's encoding shares its id; the child-step cache
    must not let a path go *through* that file."""
    inner = encode_tree([Entry(b"secret", Kind.FILE, 0o644, 1, 0, Storage.INLINE,
                               data=b"s")])
    store = Store.open(tmp_path / "store", create=True)
    tid = store.put_raw(ObjType.TREE, inner)
    root = store.put_raw(ObjType.TREE, encode_tree([
        Entry(b"dir", Kind.DIR, 0o755, 0, 0, None, tid),
        Entry(b"file", Kind.FILE, 0o644, len(inner), 0, Storage.CHUNK, tid)]))
    store.close()
    vfs = VFS(LocalSource(tmp_path / "store"), root)
    assert vfs.lookup("dir/secret").entry.data == b"s"
    with pytest.raises(NotFound):
        vfs.lookup("file/secret")
