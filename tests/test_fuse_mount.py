"""Real FUSE mounts of signed releases: fidelity, EROFS, xattrs, lifecycle, dlopen."""

from __future__ import annotations

import ctypes.util
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore.errors import UnsafeFolder
from casstore.format.objects import ObjectId
from casstore.format.trees import Storage
from casstore.view.reader import TreeReader, root_entry

from fuse_fixtures import Kit, Mounter, mounted, run_cas

pytestmark = pytest.mark.fuse

SIZES = [0, 1, 100, 4095, 4096, 16383, 16384, 16385, 65536, 300_001, (1 << 20) + 7,
         (5 << 20) + 3, 9 << 20]


def make_tree(root: Path, seed: int = 7) -> None:
    """Files of many sizes (inline, one chunk, many chunks), links, modes, ns mtimes."""
    rnd = random.Random(seed)
    for i, size in enumerate(SIZES):
        d = root / f"d{i % 3}" / ("nested/deeper" if i % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(size // 2) + bytes(size - size // 2)
        (d / f"f{size}.bin").write_bytes(data)
    for j in range(200):
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"s{j:03d}.jl").write_bytes(rnd.randbytes(rnd.randrange(1, 3000)))
    (root / "bin").mkdir()
    for name, mode in (("run", 0o755), ("private", 0o700), ("ro", 0o444), ("sgid", 0o2755)):
        (root / "bin" / name).write_bytes(b"#!/bin/sh\necho " + name.encode() + b"\n")
        os.chmod(root / "bin" / name, mode)
    (root / "empty-dir").mkdir()
    (root / "caf\u00e9 space.txt").write_text("unicode name\n")
    os.symlink("d0/f0.bin", root / "link-rel")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.symlink("many", root / "link-dir")
    for k, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        t = 1_234_567_890_123_456_789 + k * 987_654_321
        os.utime(p, ns=(t, t), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                extra = st.st_nlink
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else None, extra)
    return out


@pytest.fixture
def tree(kit: Kit) -> tuple[Path, ObjectId]:
    src = kit.base / "src"
    src.mkdir()
    make_tree(src)
    root = kit.put(src)
    kit.publish("depot", 1, root)
    return src, root


def test_whole_tree_matches_source(kit: Kit, mounter: Mounter, tree) -> None:
    src, _root = tree
    mp = mounter.mount("depot")
    expected, got = describe(src), describe(mp)
    assert got.keys() == expected.keys()
    for rel in expected:
        assert got[rel] == expected[rel], rel
    assert "mounting depot revision 1" in mounter.output()


@pytest.mark.slow
def test_cp_a_and_find_behave_as_local(kit: Kit, mounter: Mounter, tree) -> None:
    src, _ = tree
    mp = mounter.mount("depot")
    copy = kit.base / "copy"
    subprocess.run(["cp", "-a", f"{mp}/.", str(copy)], check=True)
    assert describe(copy) == describe(src)
    find = subprocess.run(["find", str(mp)], capture_output=True, text=True, check=True)
    assert len(find.stdout.splitlines()) == len(describe(src)) + 1


@pytest.mark.slow
@pytest.mark.parametrize("action", ["write", "create", "mkdir", "unlink", "rmdir", "chmod",
                                    "truncate", "rename", "symlink", "utime", "setxattr"])
def test_writes_are_erofs(kit: Kit, mounter: Mounter, tree, action: str) -> None:
    mp = mounter.mount("depot")
    f = mp / "d2" / "f100.bin"
    actions = {
        "write": lambda: open(f, "r+b"),
        "create": lambda: open(mp / "new", "wb"),
        "mkdir": lambda: os.mkdir(mp / "newdir"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(mp / "empty-dir"),
        "chmod": lambda: os.chmod(f, 0o777),
        "truncate": lambda: os.truncate(f, 0),
        "rename": lambda: os.rename(f, mp / "moved"),
        "symlink": lambda: os.symlink("x", mp / "newlink"),
        "utime": lambda: os.utime(f, ns=(1, 1)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
    }
    with pytest.raises(OSError) as info:
        actions[action]()
    assert info.value.errno == errno.EROFS
    assert f.read_bytes()[:1] is not None and (mp / "d2" / "f100.bin").stat().st_size == 100


@pytest.mark.slow
def test_xattrs(kit: Kit, mounter: Mounter, tree) -> None:
    src, root = tree
    mp = mounter.mount("depot")
    reader = TreeReader(kit.store)
    top = root_entry(root)
    assert os.getxattr(mp, "user.cas.id").decode() == str(root)
    assert os.getxattr(mp, "user.cas.release") == b"depot"
    assert os.getxattr(mp, "user.cas.revision") == b"1"
    assert os.getxattr(mp, "user.cas.nioerr") == b"0"
    for rel in ("d2/f100.bin", "d0/nested/deeper/f4095.bin", "d0/nested/deeper/f300001.bin",
                "d0/f9437184.bin", "many", "d0/f0.bin"):
        entry = reader.lookup(top, rel)
        xid = os.getxattr(mp / rel, "user.cas.id").decode()
        if entry.oid is not None:
            assert xid == str(entry.oid), rel
        else:
            assert entry.storage == Storage.INLINE
            assert xid == str(ObjectId.of((src / rel).read_bytes())), rel
        names = os.listxattr(mp / rel)
        assert "user.cas.variant" not in names
        with pytest.raises(OSError) as info:
            os.getxattr(mp / rel, "user.cas.variant")
        assert info.value.errno == errno.ENODATA
    assert os.getxattr(mp / "d0/nested/deeper/f300001.bin", "user.cas.storage") == b"chunk"
    assert os.getxattr(mp / "d0/f9437184.bin", "user.cas.storage") == b"blob"


@pytest.mark.slow
def test_status_and_sigterm(kit: Kit, mounter: Mounter, tree) -> None:
    mp = mounter.mount("depot")
    (mp / "d0/f9437184.bin").read_bytes()  # fills the whole-file cache
    res = run_cas("--json", "status", "--config", str(kit.config), str(mp))
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert (st["release"], st["revision"], st["mounted"], st["alive"]) == ("depot", 1, True, True)
    assert st["errors"].get("eio", 0) == 0
    deadline = time.monotonic() + 5
    while st["cache"]["bytes"] < 9 << 20 and time.monotonic() < deadline:
        time.sleep(0.3)
        st = json.loads(run_cas("--json", "status", "--config", str(kit.config),
                                str(mp)).stdout)
    assert st["cache"]["bytes"] >= 9 << 20
    proc = mounter.procs[-1][0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not mounted(mp)
    res = run_cas("status", "--config", str(kit.config), str(mp))
    assert res.returncode != 0 and "no casstore status" in res.stderr


@pytest.mark.slow
def test_daemon_mode_and_umount(kit: Kit, tree) -> None:
    mp = kit.base / "dmnt"
    mp.mkdir()
    try:
        res = run_cas("mount", "--config", str(kit.config), "depot", str(mp))
        assert res.returncode == 0, res.stderr
        assert mounted(mp)
        assert (mp / "d2" / "f100.bin").stat().st_size == 100
        pid = json.loads(run_cas("--json", "status", "--config", str(kit.config),
                                 str(mp)).stdout)["pid"]
        res = run_cas("umount", "--config", str(kit.config), str(mp))
        assert res.returncode == 0, res.stderr
        assert not mounted(mp)
        time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    finally:
        if mounted(mp):
            subprocess.run(["fusermount3", "-uz", str(mp)], check=False)


def test_umount_of_unmounted_is_an_error(kit: Kit) -> None:
    (kit.base / "nothing").mkdir()
    res = run_cas("umount", "--config", str(kit.config), str(kit.base / "nothing"))
    assert res.returncode == 17 and "not mounted" in res.stderr


def test_umount_refuses_what_is_not_a_cas_mount(kit: Kit) -> None:
    """A tmpfs (in a private mount namespace) is left mounted: exit 28, one line."""
    mp = kit.base / "tmpfs"
    mp.mkdir()
    script = ('mount -t tmpfs casstore-test "$1" || exit 99; '
              '"$2" -m casstore umount --config "$3" "$1"; echo "rc=$?"; '
              'grep -c " $1 tmpfs " /proc/self/mounts')
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                          "sh", str(mp), sys.executable, str(kit.config)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.stdout.split() == ["rc=28", "1"], (res.stdout, res.stderr)
    assert "not a casstore mount" in res.stderr and "Traceback" not in res.stderr
    assert not mounted(mp)  # the namespace (and its tmpfs) is gone


@pytest.mark.slow
def test_big_directory_listed_page_by_page(kit: Kit, mounter: Mounter) -> None:
    """readdir is served a page at a time (offsets): nothing lost or repeated."""
    src = kit.base / "bigdir"
    (src / "d").mkdir(parents=True)
    names = [f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(5000)]
    for n in names:
        (src / "d" / n).touch()
    kit.publish("bigdir", 1, kit.put(src))
    mp = mounter.mount("bigdir")
    assert sorted(os.listdir(mp / "d")) == sorted(names)
    assert len(os.listdir(mp / "d")) == 5000
    ls = subprocess.run(["ls", "-f", str(mp / "d")], capture_output=True, text=True, check=True)
    assert sorted(ls.stdout.split()) == sorted([".", "..", *names])


def test_mount_refuses_a_cache_folder_others_can_write(kit: Kit, tree) -> None:
    cache = kit.base / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    (kit.base / "m").mkdir()
    res = run_cas("mount", "--config", str(kit.config), "depot", str(kit.base / "m"))
    assert res.returncode == UnsafeFolder.exit_code == 21, res.stderr
    assert res.stderr.startswith("cas: error:") and "writable by group or others" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not mounted(kit.base / "m")


def _real_lib(name: str) -> Path:
    found = ctypes.util.find_library(name)
    assert found, name
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64"):
        if (Path(d) / found).exists():
            return (Path(d) / found).resolve()
    raise AssertionError(f"cannot locate {found}")


@pytest.mark.slow
def test_dlopen_and_mmap_from_mount(kit: Kit, mounter: Mounter) -> None:
    src = kit.base / "libsrc"
    (src / "lib").mkdir(parents=True)
    libz = _real_lib("z")
    shutil.copy2(libz, src / "lib" / "libz.so.1")
    big = random.Random(3).randbytes(12 << 20)
    (src / "lib" / "big.img").write_bytes(big)
    kit.publish("libs", 1, kit.put(src))
    mp = mounter.mount("libs")
    code = ("import ctypes,sys; z=ctypes.CDLL(sys.argv[1]); z.zlibVersion.restype=ctypes.c_char_p;"
            "print(z.zlibVersion().decode())")
    here = subprocess.run([sys.executable, "-c", code, str(libz)], capture_output=True,
                          text=True, check=True)
    there = subprocess.run([sys.executable, "-c", code, str(mp / "lib/libz.so.1")],
                           capture_output=True, text=True, check=True)
    assert there.stdout == here.stdout and there.stdout.strip()
    maps = subprocess.run([sys.executable, "-c", code + ";print(open('/proc/self/maps').read())",
                           str(mp / "lib/libz.so.1")], capture_output=True, text=True, check=True)
    assert str(mp / "lib/libz.so.1") in maps.stdout  # really mapped from the mount
    with open(mp / "lib" / "big.img", "rb") as f, mmap.mmap(f.fileno(), 0,
                                                             access=mmap.ACCESS_READ) as m:
        touched = bytes(m[i] for i in range(0, len(m), 4096))
        assert touched == big[::4096]
        assert hashlib.sha256(m).digest() == hashlib.sha256(big).digest()


@pytest.mark.slow
def test_read_only_source_and_cache_copy_rehashed(kit: Kit, mounter: Mounter, tree) -> None:
    """The source may be a read-only mount; a damaged cache copy is never served."""
    src, _root = tree
    ro = kit.base / "ro-store"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(kit.store.root), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        kit.config.write_text(kit.config.read_text().replace('source = "store"',
                                                             'source = "ro-store"'))
        big = "d0/f9437184.bin"
        mp = mounter.mount("depot")
        assert (mp / big).read_bytes() == (src / big).read_bytes()
        mounter.cleanup()
        copies = list((kit.base / "cache" / "files").iterdir())
        assert len(copies) == 1 and copies[0].stat().st_size == 9 << 20
        with open(copies[0], "r+b") as f:  # damage the cached copy between mounts
            f.seek(5 << 20)
            f.write(b"\xff" * 4096)
        mp = mounter.mount("depot", name="mnt2")
        assert hashlib.sha256((mp / big).read_bytes()).digest() == hashlib.sha256(
            (src / big).read_bytes()).digest()
        assert describe(mp) == describe(src)
    finally:
        mounter.cleanup()
        subprocess.run(["umount", str(ro)], check=False)
