"""``cas put`` under hostile conditions: files changing while read, gc racing a put,
deep folders, long names, unreadable paths, no free inodes.

Each test drives the real ``cas`` command as a separate process, as a user would.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore.errors import FileChanged, NameTooLong
from casstore.format.chunking import chunk_spans
from casstore.format.objects import ObjType, decode
from casstore.format.trees import decode_blob
from casstore.store.snapshot import Snapshot, _check_entry_name
from casstore.store.writable import Store, StoreSettings

from helpers import Result, assert_one_line_error, cas, remove_deep
from other_uid import OtherUidPython

_MUTATOR = r"""
import os, random, sys
path, mode = sys.argv[1], sys.argv[2]
rnd = random.Random(7)
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
print("ready", flush=True)
while True:
    if mode == "pwrite":
        os.pwrite(fd, rnd.randbytes(64), rnd.randrange(size - 64))
    else:  # shrink and grow again, forever
        os.ftruncate(fd, rnd.randrange(size // 4, size // 2))
        os.ftruncate(fd, size)
"""


def _start_mutator(path: Path, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _MUTATOR, str(path), mode],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"  # it has the file open and is writing
    return p


def _stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait(timeout=30)


def _fsck_clean(store: Path) -> None:
    res = cas(store, "--json", "fsck")
    doc = json.loads(res.out)
    assert doc["problems"] == [], doc["problems"][:5]
    assert res.code == 0, res


def _big_file(path: Path, size: int) -> None:
    # Half random, half text-like: compressible, so compressed and hashed bytes
    # disagreeing is visible as a hash mismatch.
    rnd = random.Random(3)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(rnd.randbytes(1 << 19) + bytes(rnd.choices(b"abcdef \n", k=1 << 19)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pwrite", "shrink"])
def test_put_of_a_file_changing_underneath_stores_no_corrupt_object(
        tmp_path: Path, mode: str) -> None:
    """A writer mutates the file during each put: put either refuses in one line
    (naming the file) or stores a consistent copy; fsck finds nothing corrupt, and a
    shrinking file never kills put with SIGBUS."""
    src = tmp_path / "big.bin"
    _big_file(src, 48 << 20)
    store = tmp_path / "store"
    outcomes = []
    for _ in range(3):
        w = _start_mutator(src, mode)
        try:
            res = cas(store, "put", str(src), timeout=600)
        finally:
            _stop(w)
        assert res.code >= 0 and res.code != 135, f"killed by a signal: {res}"
        if res.code == 0:
            outcomes.append("stored")
        else:
            assert_one_line_error(res)
            assert res.code == FileChanged.exit_code, res
            assert str(src) in res.err
            outcomes.append("refused")
        _fsck_clean(store)
    assert outcomes  # three real puts ran against a live writer


@pytest.mark.slow
def test_a_file_that_stops_changing_is_stored_exactly(tmp_path: Path) -> None:
    """After the writer stops, the stored bytes are the file's bytes."""
    src = tmp_path / "big.bin"
    _big_file(src, 8 << 20)
    store = tmp_path / "store"
    oid = cas(store, "put", str(src), check=True).out.strip()
    cas(store, "get", oid, str(tmp_path / "out"), check=True)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_windowed_reads_cut_exactly_like_one_pass(tmp_path: Path) -> None:
    """Reading in windows must not move cut points (dedup would silently drop)."""
    data = random.Random(5).randbytes(3 << 20)
    src = tmp_path / "f"
    src.write_bytes(data)
    s = StoreSettings(chunk_min=4096, chunk_avg=16384, chunk_max=65536, durable=False)
    store = Store.init(tmp_path / "store", s)
    with Snapshot(store) as snap:
        snap.window = 4 * s.chunk_max + 12345  # many windows, odd size
        oid = snap.put_single_file(src)
    _kind, raw = decode(oid, store.read_stored(oid), ObjType.BLOB)
    got = [c.length for c in decode_blob(raw)[1]]
    want = [n for _o, n in chunk_spans(data, s.chunk_min, s.chunk_avg, s.chunk_max)]
    assert got == want and len(want) > 40


_GC_LOOP = r"""
import random, sys, time
from casstore.errors import CasError
from casstore.store.gc import gc
from casstore.store.writable import Store
store = Store.open(sys.argv[1])
rnd = random.Random(1)
end = time.monotonic() + 600
print("ready", flush=True)
while time.monotonic() < end:
    time.sleep(rnd.random() * 0.15)  # so that some gc starts in the middle of a put
    try:
        gc(store, 0.0)
    except CasError:
        pass  # e.g. it found missing objects: fsck below reports them
"""


@pytest.mark.slow
def test_concurrent_named_puts_survive_gc_grace_zero(tmp_path: Path) -> None:
    """Pairs of puts with --name while gc --grace 0 runs in a loop: nothing under a
    ref is ever swept (the ref is written before the put releases the store lock)."""
    store = tmp_path / "store"
    cas(store, "init", check=True)
    gc_loop = subprocess.Popen([sys.executable, "-c", _GC_LOOP, str(store)],
                               stdout=subprocess.PIPE)
    names = []
    try:
        assert gc_loop.stdout is not None and gc_loop.stdout.readline() == b"ready\n"
        for rnd in range(8):
            procs = []
            for i in range(2):
                d = tmp_path / f"src{rnd}-{i}"
                (d / "sub").mkdir(parents=True)
                r = random.Random(rnd * 100 + i)
                (d / "a.bin").write_bytes(r.randbytes(4 << 20))
                (d / "sub" / "b.txt").write_bytes(r.randbytes(5000))
                names.append(f"r{rnd}-{i}")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "casstore", "--store", str(store), "put",
                     "--name", names[-1], str(d)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for p in procs:
                _out, err = p.communicate(timeout=600)
                assert p.returncode == 0, err
    finally:
        gc_loop.kill()
        gc_loop.wait(timeout=60)
    res = cas(store, "fsck")
    assert "missing" not in res.out + res.err, res.out[-2000:]
    assert res.code == 0, res
    for name in names:
        out = tmp_path / f"out-{name}"
        cas(store, "get", name, str(out), check=True)
        assert (out / "a.bin").read_bytes() == (tmp_path / f"src{name[1:]}" / "a.bin"
                                                 ).read_bytes()


def _deep(root: Path, levels: int) -> None:
    """A chain of ``levels`` folders named ``d`` with a file at the bottom (made with
    dir fds, so it does not depend on PATH_MAX)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"bottom\n")
        os.close(wfd)
    finally:
        os.close(fd)


def _read_deep(root: Path, levels: int) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.listdir(fd) == ["leaf"]
        rfd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(rfd, 100)
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_put_and_get_of_a_600_level_folder(tmp_path: Path) -> None:
    """No RecursionError: the walk is iterative."""
    _deep(tmp_path / "src", 600)
    store = tmp_path / "store"
    try:
        oid = cas(store, "put", str(tmp_path / "src"), check=True).out.strip()
        cas(store, "get", oid, str(tmp_path / "out"), check=True)
        assert _read_deep(tmp_path / "out", 600) == b"bottom\n"
        assert cas(store, "put", str(tmp_path / "out"), check=True).out.strip() != ""
    finally:
        remove_deep(tmp_path / "src", tmp_path / "out")


def test_put_refuses_names_over_255_bytes() -> None:
    """Linux cannot make such a file, but another filesystem or a future caller may:
    the check names the path and has its own exit code."""
    _check_entry_name(b"n" * 255, "ok")
    with pytest.raises(NameTooLong, match="somewhere/nnn.*256 bytes"):
        _check_entry_name(b"n" * 256, "somewhere/" + "n" * 256)


def test_unreadable_path_is_one_line(other_uid_cas: OtherUidPython) -> None:
    """Not click's four-line usage error.  Root reads everything, so the command runs as
    uid 65534, from a copy of casstore that uid can read wherever the checkout lies."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cas-unreadable-", dir="/tmp"))
    os.chmod(base, 0o777)  # pytest's tmp_path is 0700: the other user could not reach it
    locked = base / "locked"
    (locked / "sub").mkdir(parents=True)
    (locked / "sub" / "f").write_text("x")
    os.chmod(locked, 0)
    store = base / "store"
    store.mkdir()
    os.chmod(store, 0o777)
    try:
        p = other_uid_cas.run("--store", str(store), "init")  # only cas init creates it
        assert p.returncode == 0, p.stderr
        for target in (locked, locked / "sub" / "f"):
            p = other_uid_cas.run("--store", str(store), "put", str(target))
            res = Result(p.returncode, p.stdout.decode(), p.stderr.decode())
            assert_one_line_error(res)
            assert "Usage" not in res.err and str(locked) in res.err, res.err
    finally:
        os.chmod(locked, 0o755)
        shutil.rmtree(base)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A tmpfs with very few inodes (and plenty of bytes); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=40", "tmpfs",
                        str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_no_free_inodes_is_the_disk_full_error(tmp_path: Path, tiny_fs: Path) -> None:
    """ENOSPC from mkdir/creat (inodes, not bytes) must be NoSpace (exit 9), on put and get."""
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f").write_bytes(random.Random(i).randbytes(40_000))
    res = cas(tiny_fs / "store", "put", str(src))
    assert_one_line_error(res)
    assert res.code == 9, res
    good = tmp_path / "good"
    oid = cas(good, "put", str(src), check=True).out.strip()
    res = cas(good, "get", oid, str(tiny_fs / "out"))
    assert_one_line_error(res)
    assert res.code == 9, res


def test_file_that_keeps_changing_is_retried_then_refused_in_process(tmp_path: Path) -> None:
    """The model, without the CLI: FileChanged names the file."""
    src = tmp_path / "f"
    _big_file(src, 4 << 20)
    store = Store.init(tmp_path / "store", StoreSettings(durable=False))
    w = _start_mutator(src, "pwrite")
    deadline = time.monotonic() + 120
    try:
        with pytest.raises(FileChanged, match=str(src)):
            while time.monotonic() < deadline:  # a lucky read is consistent: try again
                with Snapshot(store) as snap:
                    snap.put_single_file(src)
    finally:
        _stop(w)
