"""Tier 2: the ``cas`` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error, cas, make_tree, snapshot


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    return src


def test_put_get_cat_ls_round_trip(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    oid = cas(store, "put", str(tree), "--name", "t1", check=True).out.strip()
    assert oid.startswith("b3-")
    cas(store, "get", oid, str(tmp_path / "out"), check=True)
    assert snapshot(tmp_path / "out") == snapshot(tree)
    assert cas(store, "cat", "t1/src/a.jl", check=True).out == (tree / "src/a.jl").read_text()
    listing = cas(store, "ls", "-l", oid, check=True).out
    assert "link-to-a -> src/a.jl" in listing and "-0755" in listing
    rows = json.loads(cas(store, "--json", "ls", "-R", oid, check=True).out)
    assert {r["path"] for r in rows} == set(snapshot(tree))


def test_get_subpath_and_single_file(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    oid = cas(store, "put", str(tree), check=True).out.strip()
    cas(store, "get", f"{oid}/src/deep", str(tmp_path / "deep"), check=True)
    assert (tmp_path / "deep/er/b.txt").read_bytes() == (tree / "src/deep/er/b.txt").read_bytes()
    fid = cas(store, "put", str(tree / "big.bin"), check=True).out.strip()
    cas(store, "get", fid, str(tmp_path / "big"), check=True)
    assert (tmp_path / "big").read_bytes() == (tree / "big.bin").read_bytes()


def test_json_put_and_stat(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    doc = json.loads(cas(store, "--json", "put", str(tree), check=True).out)
    assert doc["id"].startswith("b3-") and doc["bytes"] > 6_000_000
    st = json.loads(cas(store, "--json", "stat", check=True).out)
    assert st["objects"] > 3 and 0 < st["stored_bytes"] < st["raw_bytes"]


def test_diff(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    a = cas(store, "put", str(tree), check=True).out.strip()
    (tree / "src/a.jl").write_text("changed")
    (tree / "new").write_text("n")
    (tree / "empty").unlink()
    b = cas(store, "put", str(tree), check=True).out.strip()
    res = cas(store, "diff", a, b)
    assert res.code == 1
    assert set(res.out.splitlines()) >= {"M src/a.jl", "+ new", "- empty"}
    assert cas(store, "diff", a, a).code == 0


def test_multiple_paths_make_a_tree(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    oid = cas(store, "put", str(tree / "src"), str(tree / "run.sh"), check=True).out.strip()
    assert sorted(cas(store, "ls", oid, check=True).out.split()) == ["run.sh", "src/"]


@pytest.mark.parametrize("args", [
    ["cat", "b3-" + "0" * 64],
    ["get", "nonexistent-ref", "/tmp/x-should-not-exist"],
    ["ls", "b3-zz"],
    ["put", "/definitely/not/here"],
    ["release", "create", "r", "nothing", "--key", "/nokey"],
    ["gc", "--grace", "soon"],
])
def test_bad_input_one_line_error(tmp_path: Path, tree: Path, args: list[str]) -> None:
    store = tmp_path / "store"
    cas(store, "put", str(tree), check=True)
    assert_one_line_error(cas(store, *args))


def test_missing_store_is_clear(tmp_path: Path) -> None:
    assert_one_line_error(cas(tmp_path / "nothing", "ls", "x"))


def test_store_from_environment(tmp_path: Path, tree: Path) -> None:
    env = {"CAS_STORE": str(tmp_path / "envstore")}
    oid = cas(None, "put", str(tree), env=env, check=True).out.strip()
    assert (tmp_path / "envstore" / "casstore.json").exists()
    assert cas(None, "ls", oid, env=env, check=True).out


def test_help_explains() -> None:
    out = subprocess.run([sys.executable, "-m", "casstore", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("put", "get", "release", "fsck", "gc", "--store"):
        assert word in out


def test_bad_depot_spec_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text("[julia\nversion = 1.5")
    res = cas(tmp_path / "store", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert "TOML" in res.err


# Modules a short `cas put` / `cas get` must not import: each costs start-up on every
# command (bench/bench_store.py measures whole processes against tar/zstd).
HEAVY = ("prometheus_client", "aiohttp", "mfusepy", "nacl", "casstore.client.metrics",
         "casstore.client.exporters", "casstore.sources.http", "casstore.sources.transport",
         "casstore.sources.objcache")


def _imported(*args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "casstore", "-q", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_put_and_get_import_nothing_heavy(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    store = str(tmp_path / "store")
    put = _imported("--store", store, "put", str(tmp_path / "f"))
    assert "casstore.store.snapshot" in put  # the parse works: put's own module is listed
    oid = cas(Path(store), "put", str(tmp_path / "f"), check=True).out.strip()
    get = _imported("--store", store, "get", oid, str(tmp_path / "out"))
    assert "casstore.store.restore" in get
    for mods in (put, get):
        heavy = {m for m in mods if m.split(".")[0] in HEAVY or m in HEAVY}
        assert not heavy, f"start-up imports {sorted(heavy)}"
