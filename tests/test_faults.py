"""Tier 2: damaged stores, killed writers and full disks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore.format.layout import object_path
from casstore.format.objects import ObjectId

from helpers import assert_one_line_error, cas, make_tree


def _big_chunk_ids(store: Path, tree_id: str) -> list[str]:
    from casstore.sources.local import LocalSource
    from casstore.view.reader import TreeReader, root_entry

    reader = TreeReader(LocalSource(store))
    entry = reader.lookup(root_entry(ObjectId.parse(tree_id)), "big.bin")
    return [str(o) for o in reader.file_chunk_ids(entry)]


@pytest.fixture()
def stored(tmp_path: Path) -> tuple[Path, str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    store = tmp_path / "store"
    oid = cas(store, "put", str(src), "--name", "main", check=True).out.strip()
    return store, oid, src


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_chunk_named_by_fsck_and_get_writes_nothing_wrong(
        tmp_path: Path, stored: tuple[Path, str, Path], damage: str) -> None:
    store, oid, src = stored
    victim = _big_chunk_ids(store, oid)[1]
    path = object_path(store, ObjectId.parse(victim))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 3]
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))

    res = cas(store, "fsck")
    assert res.code == 1 and victim in res.out
    got = cas(store, "get", oid, str(tmp_path / "out"))
    assert_one_line_error(got)
    assert victim in got.err
    assert not (tmp_path / "out" / "big.bin").exists()
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".cas-tmp")]
    assert leftovers == []
    # every file that was written is byte-exact
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() == (src / p.relative_to(tmp_path / "out")).read_bytes()
    assert_one_line_error(cas(store, "cat", f"{oid}/big.bin"))


def test_missing_object_named_by_fsck(stored: tuple[Path, str, Path]) -> None:
    store, oid, _src = stored
    victim = _big_chunk_ids(store, oid)[0]
    object_path(store, ObjectId.parse(victim)).unlink()
    res = cas(store, "fsck")
    assert res.code == 1 and f"missing object {victim}" in res.out


def test_rebuild_index(stored: tuple[Path, str, Path]) -> None:
    store, _oid, _src = stored
    before = cas(store, "--json", "stat", check=True).out
    import shutil

    shutil.rmtree(store / "index")
    cas(store, "fsck", "--rebuild-index", check=True)
    assert cas(store, "--json", "stat", check=True).out == before


@pytest.mark.slow
def test_sigkill_during_put_leaves_a_consistent_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        (src / f"d{i}").mkdir(parents=True)
        for j in range(30):
            (src / f"d{i}" / f"f{j}").write_bytes(random.Random(i * 100 + j).randbytes(30_000))
        (src / f"d{i}" / "big").write_bytes(random.Random(i).randbytes(8 << 20))
    store = tmp_path / "store"
    start = time.monotonic()
    cas(tmp_path / "scratch", "put", str(src), check=True)
    duration = time.monotonic() - start
    cas(store, "init", check=True)
    rnd = random.Random(7)
    killed = runs = leftovers = drifted = 0
    while killed < 20 and runs < 60:  # at least 20 puts killed part-way
        runs += 1
        p = subprocess.Popen([sys.executable, "-m", "casstore", "--store", str(store), "put",
                              str(src)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.2, 0.95) * duration)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
        res = cas(store, "fsck")
        assert res.code == 0, f"run {runs}: {res.out}"
        files = sum(len(os.listdir(d)) for d in (store / "objects").iterdir())
        indexed = json.loads(cas(store, "--json", "stat", check=True).out)["objects"]
        if indexed != files:  # a killed put never recorded its last index batch
            drifted += 1
            assert "missing from the index" in res.out, res.out
            cas(store, "fsck", "--rebuild-index", check=True)
            assert json.loads(cas(store, "--json", "stat").out)["objects"] == files
        leftovers += len(list((store / "tmp").iterdir()))
        # nothing is referenced, so this empties the store: every run writes afresh
        cas(store, "gc", "--grace", "0", check=True)
        assert list((store / "tmp").iterdir()) == []
    assert killed >= 20
    assert leftovers > 0  # some kills did hit a write in progress
    assert drifted > 0  # and some left the index behind the objects, which fsck named
    cas(store, "gc", "--grace", "0", check=True)
    assert [p for p in (store / "tmp").iterdir()] == []
    final = cas(store, "put", str(src), check=True).out.strip()
    cas(store, "get", final, str(tmp_path / "out"), check=True)
    assert (tmp_path / "out/d3/big").read_bytes() == (src / "d3/big").read_bytes()


@pytest.fixture()
def small_fs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_is_clear_and_store_intact(tmp_path: Path, small_fs: Path) -> None:
    store = small_fs / "store"
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "a").write_bytes(random.Random(1).randbytes(1 << 20))
    first = cas(store, "put", str(ok), "--name", "ok", check=True).out.strip()
    big = tmp_path / "big"
    big.mkdir()
    (big / "x").write_bytes(random.Random(2).randbytes(12 << 20))
    res = cas(store, "put", str(big))
    assert_one_line_error(res)
    assert "no space left" in res.err and res.code == 9
    assert cas(store, "fsck").code == 0
    assert list((store / "tmp").iterdir()) == []
    cas(store, "get", first, str(tmp_path / "back"), check=True)
    assert (tmp_path / "back/a").read_bytes() == (ok / "a").read_bytes()
