"""Tier 2: garbage collection and concurrent writers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cas


def _tree(path: Path, seed: int) -> Path:
    path.mkdir()
    (path / "data").write_bytes(random.Random(seed).randbytes(2 << 20))
    (path / "small").write_text(f"small {seed}")
    for f in ("data", "small"):
        os.utime(path / f, ns=(10**18, 10**18))
    return path


def _objects(store: Path) -> int:
    return sum(len(os.listdir(store / "objects" / d)) for d in os.listdir(store / "objects"))


def _age(store: Path, seconds: float) -> None:
    old = time.time() - seconds
    for d in (store / "objects").iterdir():
        for f in d.iterdir():
            os.utime(f, (old, old))


@pytest.mark.slow
def test_gc_keeps_referenced_and_young(tmp_path: Path) -> None:
    store = tmp_path / "store"
    keep = cas(store, "put", str(_tree(tmp_path / "a", 1)), "--name", "keep", check=True).out
    cas(store, "put", str(_tree(tmp_path / "b", 2)), check=True)
    total = _objects(store)
    rep = json.loads(cas(store, "--json", "gc", check=True).out)
    assert rep["deleted"] == 0 and rep["kept_young"] > 0 and _objects(store) == total
    _age(store, 2 * 86400)
    dry = json.loads(cas(store, "--json", "gc", "--dry-run", check=True).out)
    assert dry["deleted"] > 0 and _objects(store) == total
    rep = json.loads(cas(store, "--json", "gc", check=True).out)
    assert rep["deleted"] == dry["deleted"] and _objects(store) < total
    assert cas(store, "fsck").code == 0
    cas(store, "get", keep.strip(), str(tmp_path / "back"), check=True)


@pytest.mark.slow
def test_gc_keeps_release_trees_and_variants(tmp_path: Path) -> None:
    store = tmp_path / "store"
    key = tmp_path / "k"
    cas(None, "keygen", str(key), check=True)
    root = cas(store, "put", str(_tree(tmp_path / "r", 3)), check=True).out.strip()
    v1 = cas(store, "put", str(_tree(tmp_path / "v1", 4)), check=True).out.strip()
    v3 = cas(store, "put", str(_tree(tmp_path / "v3", 5)), check=True).out.strip()
    cas(store, "release", "create", "rel", root, "--key", str(key), "--variant", f"x86-64={v1}",
        "--variant", f"x86-64-v3={v3}", check=True)
    _age(store, 2 * 86400)
    rep = json.loads(cas(store, "--json", "gc", "--grace", "1h", check=True).out)
    assert rep["deleted"] == 0
    for oid in (root, v1, v3):
        assert cas(store, "ls", oid).code == 0


@pytest.mark.slow
def test_put_that_reuses_old_objects_refreshes_them(tmp_path: Path) -> None:
    """A put that dedups against old unreferenced objects must not lose them to gc."""
    store = tmp_path / "store"
    src = _tree(tmp_path / "a", 1)
    cas(store, "put", str(src), check=True)
    _age(store, 2 * 86400)
    oid = cas(store, "put", str(src), check=True).out.strip()
    cas(store, "gc", check=True)
    cas(store, "get", oid, str(tmp_path / "back"), check=True)


@pytest.mark.slow
def test_concurrent_puts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cas(store, "init", check=True)
    srcs = [_tree(tmp_path / f"s{i}", i % 3) for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-m", "casstore", "--store", str(store), "put",
                               str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s in srcs]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.append(out.decode().strip())
    assert ids[0] == ids[3] and ids[1] == ids[4] and len(set(ids)) == 3
    assert cas(store, "fsck").code == 0
    stat = json.loads(cas(store, "--json", "stat", check=True).out)
    assert stat["objects"] == _objects(store)


def test_gc_refuses_to_sweep_when_marking_finds_damage(tmp_path: Path) -> None:
    """A corrupt tree hides everything below it from marking: sweeping would lose it."""
    from casstore.format.layout import object_path
    from casstore.format.objects import ObjectId

    store = tmp_path / "store"
    oid = cas(store, "put", str(_tree(tmp_path / "a", 1)), "--name", "keep", check=True).out
    path = object_path(store, ObjectId.parse(oid.strip()))
    path.write_bytes(path.read_bytes()[:-3])
    _age(store, 2 * 86400)
    before = _objects(store)
    res = cas(store, "gc")
    assert res.code != 0 and "nothing deleted" in res.err and _objects(store) == before
    assert cas(store, "gc", "--force").code == 0 and _objects(store) < before


@pytest.mark.slow
def test_gc_refuses_grace_that_is_not_finite_and_non_negative(tmp_path: Path) -> None:
    """`--grace nan` and `--grace -1h` used to delete a fresh, unreferenced put."""
    from helpers import assert_one_line_error

    store = tmp_path / "store"
    cas(store, "put", str(_tree(tmp_path / "a", 1)), check=True)
    total = _objects(store)
    for grace in ("nan", "-1h", "-5", "inf", "infd", "-0.5s"):
        res = cas(store, "gc", f"--grace={grace}")
        assert_one_line_error(res)
        assert res.code == 2 and "finite" in res.err, (grace, res)
        assert _objects(store) == total, grace
    assert cas(store, "gc", "--grace=0s", check=True).code == 0


def test_a_ref_file_over_the_format_limit_stops_gc(tmp_path: Path) -> None:
    """FORMAT §10.1: a ref file holds at most 1 KiB.  Readers refuse a larger one, so gc
    must not take it for a root either: it is damage, and gc deletes nothing."""
    store = tmp_path / "store"
    oid = cas(store, "put", str(_tree(tmp_path / "a", 1)), check=True).out.strip()
    (store / "refs" / "big").write_text(oid + "\n" + " " * 2000)
    assert 1024 < (store / "refs" / "big").stat().st_size < 4096
    _age(store, 2 * 86400)
    total = _objects(store)
    res = cas(store, "gc")
    assert res.code == 31 and "refs/big" in res.err and "too large" in res.err, res
    assert _objects(store) == total
    res = cas(store, "fsck")
    assert res.code == 1 and "refs/big" in res.out, res
    assert cas(store, "cat", "big").code != 0  # the readers' limit is the same one
