"""The FUSE ops layer, client config and file cache without any mount (fast tier)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import mfusepy
import pytest

from casstore.client.config import from_dict, load, parse_size
from casstore.client.fuse.fs import MountInfo, ReleaseFS
from casstore.client.fuse.ops import CasOps
from casstore.errors import KeyFileError, UsageError
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store
from casstore.view.filecache import FileCache
from casstore.view.vfs import VFS


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[tuple[ReleaseFS, Store, dict[str, bytes]]]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"small": b"tiny\n", "big": os.urandom(3 << 20), "sub/mid": os.urandom(100_000)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    os.utime(src / "small", ns=(5, 1_500_000_000_987_654_321))
    os.chmod(src / "small", 0o751)
    os.symlink("sub/mid", src / "ln")
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    cache = FileCache(store, tmp_path / "cache", 64 << 20, prefetch_min=1 << 20)
    vfs = VFS(store, root, info=MountInfo("r", 3, None, str(root)), mtime_ns=7, cache=cache)
    try:
        yield ReleaseFS(vfs), store, files
    finally:
        cache.close()  # stops the prefetch threads and closes their files


def test_getattr_exact(fs) -> None:
    rfs, _store, files = fs
    a = rfs.getattr("/small")
    assert a["st_mode"] == stat.S_IFREG | 0o751
    assert a["st_mtime"] == 1_500_000_000_987_654_321 and a["st_size"] == 5
    assert rfs.getattr("/")["st_nlink"] == 3  # . + .. + sub
    assert rfs.getattr("/ln")["st_mode"] == stat.S_IFLNK | 0o777
    assert rfs.readlink("/ln") == "sub/mid"
    assert sorted(rfs.readdir("/")) == [".", "..", "big", "ln", "small", "sub"]


def test_reads_through_cache_and_direct(fs) -> None:
    rfs, _store, files = fs
    assert rfs.read("/sub/mid", 1000, 99_500) == files["sub/mid"][99_500:]
    got = b"".join(rfs.read("/big", 1 << 20, off) for off in range(0, 3 << 20, 1 << 20))
    assert got == files["big"]
    assert rfs.cache is not None and rfs.cache.stats["prefetches"] == 1
    assert rfs.cache.used_bytes() == 3 << 20


def test_ops_boundary_maps_errors(fs) -> None:
    rfs, store, _files = fs
    ops = CasOps(rfs)
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.getattr("/nope")
    assert info.value.errno == errno.ENOENT and ops.errors["eio"] == 0
    entry = rfs.node("/sub/mid").entry
    object_path(store.root, entry.oid).unlink()
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.read("/sub/mid", 10, 0, 0)
    assert info.value.errno == errno.EIO
    assert ops.errors["missing"] == 1 and ops.errors["eio"] == 1
    assert ops.read("/small", 100, 0, 0) == b"tiny\n"  # still serving
    for name in ("write", "mkdir", "unlink", "chmod", "truncate", "create", "rename"):
        with pytest.raises(mfusepy.FuseOSError) as info:
            getattr(ops, name)("/small", 0)
        assert info.value.errno == errno.EROFS
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.open("/small", os.O_RDONLY)
    assert info.value.errno == errno.ENOSYS


def test_unexpected_exception_is_eio_and_counted(fs, monkeypatch) -> None:
    rfs, _store, _files = fs
    ops = CasOps(rfs)
    monkeypatch.setattr(rfs, "readdir", lambda p: 1 / 0)
    with pytest.raises(mfusepy.FuseOSError) as info:
        ops.readdir("/", 0)
    assert info.value.errno == errno.EIO and ops.errors["internal"] == 1


def test_statfs_name_max_is_linux_255(fs) -> None:
    rfs, _store, _files = fs
    assert CasOps(rfs).statfs("/")["f_namemax"] == 255


def test_xattrs_model(fs) -> None:
    rfs, _store, files = fs
    x = rfs.xattrs("/small")
    assert x["user.cas.id"] == str(ObjectId.of(files["small"])).encode()
    assert x["user.cas.storage"] == b"packed" and x["user.cas.revision"] == b"3"
    assert "user.cas.variant" not in x
    assert rfs.xattrs("/")["user.cas.level"] == b"none"


def test_cache_eviction_bounded(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(2 << 20))
    store = Store.open(tmp_path / "store", create=True)
    root = put_paths(store, [src])
    cache = FileCache(store, tmp_path / "cache", 5 << 20, prefetch_min=1 << 20)
    vfs = VFS(store, root, cache=cache)
    try:
        for i in range(3):
            node = vfs.lookup(f"f{i}")
            assert vfs.read(node, 0, 1 << 22) == (src / f"f{i}").read_bytes()
            time.sleep(0.01)
        assert cache.stats["hits"] >= 3
        assert cache.used_bytes() <= 5 << 20 and cache.stats["evictions"] >= 1
        disk = sum(p.stat().st_size for p in (tmp_path / "cache" / "files").iterdir())
        assert disk + cache.used_bytes() <= 5 << 20
    finally:
        cache.close()


def test_config_parsing(tmp_path: Path) -> None:
    assert parse_size("512M") == 512 << 20 and parse_size("20G") == 20 << 30
    assert parse_size(4096) == 4096
    with pytest.raises(UsageError):
        parse_size("lots")
    with pytest.raises(UsageError):
        from_dict({"trusted_key": "typo"})
    with pytest.raises(KeyFileError):
        from_dict({"trusted_keys": [1]})
    cfg_file = tmp_path / "etc" / "client.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('trusted_keys = ["' + "ab" * 32 + '"]\nsource = "../store"\n'
                        'cache_size = "1G"\narch = "x86-64-v2"\n')
    cfg = load(cfg_file)
    assert cfg.trusted() == ["ab" * 32] and cfg.cache_size == 1 << 30
    assert cfg.source is not None and cfg.source.resolve() == (tmp_path / "store").resolve()
    assert cfg.arch == "x86-64-v2"
    with pytest.raises(UsageError):
        load(tmp_path / "missing.toml")


def test_status_files_are_per_namespace_and_stale_ones_pruned(tmp_path: Path) -> None:
    import json
    import subprocess

    from casstore.client.config import ClientConfig
    from casstore.client.fuse.mount import mount_ns, prune_stale, status_path

    cfg = ClientConfig(state_dir=tmp_path)
    spath = status_path(cfg, tmp_path / "depot")
    assert spath.name.endswith(f"@{mount_ns()}.json") and mount_ns().isdigit()
    cfg.run_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 3600
    files = {}
    for name, pid, mtime in (("dead-old", dead.pid, old), ("dead-new", dead.pid, None),
                             ("alive-old", os.getpid(), old)):
        files[name] = cfg.run_dir / f"{name}.json"
        files[name].write_text(json.dumps({"pid": pid}))
        if mtime:
            os.utime(files[name], (mtime, mtime))
    prune_stale(cfg)
    assert {n for n, p in files.items() if p.exists()} == {"dead-new", "alive-old"}


def test_fast_getattr_writes_what_mfusepy_would(fs) -> None:
    """The packed-struct getattr path is byte-identical to mfusepy's own."""
    import ctypes

    from casstore.client.fuse.mount import fast_getattr_ok, fuse_class

    rfs, _store, _files = fs
    assert fast_getattr_ok()  # else the mount silently loses the fast path
    fast_cls = fuse_class()
    assert fast_cls is not mfusepy.FUSE
    ops = CasOps(rfs)
    fast = fast_cls.__new__(fast_cls)  # no mount: only the callback is exercised
    slow = mfusepy.FUSE.__new__(mfusepy.FUSE)
    for f in (fast, slow):
        f.operations, f.raw_fi, f.use_ns = ops, False, True
        f.encoding, f.errors = "utf-8", "surrogateescape"
    buf = ctypes.pointer(mfusepy.c_stat())
    for path in ("/", "/small", "/big", "/ln", "/sub", "/sub/mid"):
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        assert slow.getattr_fuse_3(path.encode(), buf, None) == 0
        want = bytes(buf.contents)
        ctypes.memset(buf, 0xAB, ctypes.sizeof(mfusepy.c_stat))
        assert fast.getattr_fuse_3(path.encode(), buf, None) == 0
        assert bytes(buf.contents) == want, path
    assert buf.contents.st_size == 100_000 and buf.contents.st_mode == stat.S_IFREG | 0o644
    with pytest.raises(mfusepy.FuseOSError) as info:
        fast.getattr_fuse_3(b"/nope", buf, None)
    assert info.value.errno == errno.ENOENT


def test_fast_readdir_gives_raw_names(fs) -> None:
    """The raw-name readdir fast path lists what mfusepy's own readdir lists."""
    from casstore.client.fuse.mount import fuse_class

    rfs, _store, _files = fs
    fast_cls = fuse_class()
    fast = fast_cls.__new__(fast_cls)
    fast.operations, fast.encoding, fast.errors = CasOps(rfs), "utf-8", "surrogateescape"
    for path in ("/", "/sub"):
        got: list[bytes] = []

        def filler(_buf, name, _st, _off, _flags, got=got) -> int:
            got.append(name)
            return 0

        fast.readdir_fuse_3(path.encode(), None, filler, 0, None, 0)
        assert got == [n.encode() for n in rfs.readdir(path)]
        for start in range(len(got) + 1):  # libfuse resumes from the last offset
            assert list(rfs.readdir_raw(path, start)) == got[start:]
    with pytest.raises(mfusepy.FuseOSError) as info:
        fast.readdir_fuse_3(b"/small", None, lambda *a: 0, 0, None, 0)
    assert info.value.errno == errno.ENOENT
