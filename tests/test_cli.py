"""Tier 2: the ``cas`` command as a user runs it.

Cases that check only what a command prints run in-process (:func:`cas_in_process`,
click's runner); exit codes, one-line errors and start-up imports need a real process
(:func:`cas`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_inproc import cas_in_process, preserved_process_state
from helpers import assert_one_line_error, cas, make_tree, snapshot


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    return src


def test_put_get_cat_ls_round_trip(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    oid = cas_in_process(store, "put", str(tree), "--name", "t1", check=True).out.strip()
    assert oid.startswith("b3-")
    cas_in_process(store, "get", oid, str(tmp_path / "out"), check=True)
    assert snapshot(tmp_path / "out") == snapshot(tree)
    cat = cas_in_process(store, "cat", "t1/src/a.jl", check=True).out
    assert cat == (tree / "src/a.jl").read_text()
    listing = cas_in_process(store, "ls", "-l", oid, check=True).out
    assert "link-to-a -> src/a.jl" in listing and "-0755" in listing
    rows = json.loads(cas_in_process(store, "--json", "ls", "-R", oid, check=True).out)
    assert {r["path"] for r in rows} == set(snapshot(tree))


def test_get_subpath_and_single_file(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    oid = cas_in_process(store, "put", str(tree), check=True).out.strip()
    cas_in_process(store, "get", f"{oid}/src/deep", str(tmp_path / "deep"), check=True)
    assert (tmp_path / "deep/er/b.txt").read_bytes() == (tree / "src/deep/er/b.txt").read_bytes()
    fid = cas_in_process(store, "put", str(tree / "big.bin"), check=True).out.strip()
    cas_in_process(store, "get", fid, str(tmp_path / "big"), check=True)
    assert (tmp_path / "big").read_bytes() == (tree / "big.bin").read_bytes()


def test_json_put_and_stat(tmp_path: Path, tree: Path) -> None:
    store = tmp_path / "store"
    doc = json.loads(cas_in_process(store, "--json", "put", str(tree), check=True).out)
    assert doc["id"].startswith("b3-") and doc["bytes"] > 6_000_000
    st = json.loads(cas_in_process(store, "--json", "stat", check=True).out)
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
    oid = cas_in_process(store, "put", str(tree / "src"), str(tree / "run.sh"),
                         check=True).out.strip()
    assert sorted(cas_in_process(store, "ls", oid, check=True).out.split()) == ["run.sh", "src/"]


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
    cas_in_process(None, "init", env=env, check=True)
    oid = cas_in_process(None, "put", str(tree), env=env, check=True).out.strip()
    assert (tmp_path / "envstore" / "casstore.json").exists()
    assert cas_in_process(None, "ls", oid, env=env, check=True).out


def test_help_explains() -> None:
    out = cas_in_process(None, "--help", check=True).out
    for word in ("put", "get", "release", "fsck", "gc", "--store"):
        assert word in out


def _open_files() -> list[str]:
    """What this process's file descriptors point at (the listing's own fd is gone by
    the time it is read)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass
    return out


def test_in_process_runs_leave_no_state_behind(tmp_path: Path, tree: Path) -> None:
    """The environment a run is given, the cwd, the umask and logging handlers are the
    test process's own again afterwards, and no file of the store is left open (LMDB
    must not have its index open twice in one process)."""
    env, cwd, mask = dict(os.environ), os.getcwd(), os.umask(0o022)
    os.umask(mask)
    handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
    store = tmp_path / "store"
    cas_in_process(None, "init", env={"CAS_STORE": str(store)}, check=True)
    oid = cas_in_process(None, "put", str(tree), env={"CAS_STORE": str(store)},
                         check=True).out.strip()
    assert cas_in_process(store, "ls", oid, check=True).out
    assert cas(store, "ls", oid, check=True).out
    assert not [f for f in _open_files() if f.startswith(str(store))]
    assert dict(os.environ) == env and os.getcwd() == cwd
    assert os.umask(mask) == mask and logging.getLogger().handlers == handlers
    with preserved_process_state():  # what a command could do, undone
        os.environ["CAS_LEAK"] = "1"
        os.chdir(tmp_path)
        os.umask(0o077)
        logging.getLogger().addHandler(logging.StreamHandler())
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger("casstore.x").addHandler(logging.NullHandler())
    assert "CAS_LEAK" not in os.environ and os.getcwd() == cwd
    assert os.umask(mask) == mask
    assert logging.getLogger().handlers == handlers
    assert logging.getLogger().level == level
    assert not logging.getLogger("casstore.x").handlers


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
    cas(Path(store), "init", check=True)
    put = _imported("--store", store, "put", str(tmp_path / "f"))
    assert "casstore.store.snapshot" in put  # the parse works: put's own module is listed
    oid = cas(Path(store), "put", str(tmp_path / "f"), check=True).out.strip()
    get = _imported("--store", store, "get", oid, str(tmp_path / "out"))
    assert "casstore.store.restore" in get
    for mods in (put, get):
        heavy = {m for m in mods if m.split(".")[0] in HEAVY or m in HEAVY}
        assert not heavy, f"start-up imports {sorted(heavy)}"


@pytest.mark.parametrize("content", [b"garbage\n", b"b3-" + b"0" * 64 + b" " * 3000])
def test_a_damaged_ref_is_named_as_damaged(tmp_path: Path, content: bytes) -> None:
    """Not "'r1' is not an object id, ref or release": the ref exists and is damaged,
    so the error says that, names its file and points at fsck."""
    store = tmp_path / "store"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x").write_text("x\n")
    cas(store, "put", str(tmp_path / "src"), "--name", "r1", check=True)
    assert cas(store, "cat", "r1/x", check=True).out == "x\n"
    (store / "refs" / "r1").write_bytes(content)
    res = cas(store, "cat", "r1/x")
    assert_one_line_error(res)
    assert "damaged" in res.err or "too large" in res.err, res.err
    assert "refs/r1" in res.err and "cas fsck" in res.err and "not an object id, ref" \
        not in res.err, res.err
    res = cas(store, "cat", "r2/x")
    assert_one_line_error(res)
    assert "'r2' is not an object id, ref or release" in res.err


@pytest.mark.parametrize("args", [("put", "SRC"), ("put", "SRC", "--name", "r"),
                                  ("fsck",), ("gc",), ("stat",)])
def test_a_store_typo_creates_nothing(tmp_path: Path, tree: Path, args: tuple) -> None:
    """Only ``cas init`` creates a store: any other command on a missing one is a
    one-line error that names the path and says how to create it."""
    typo = tmp_path / "stroe"
    res = cas(typo, *[str(tree) if a == "SRC" else a for a in args], init=False)
    assert_one_line_error(res)
    assert str(typo) in res.err and "cas init" in res.err, res.err
    assert not os.path.lexists(typo)


def test_a_store_typo_creates_nothing_for_pull_registry_or_depot(tmp_path: Path) -> None:
    typo = tmp_path / "stroe"
    spec = tmp_path / "depot.toml"
    spec.write_text("[julia]\nversion = \"1.5.3\"\n")
    for args in (("pull", "http://127.0.0.1:9/", "app", "--trusted-key", "0" * 64),
                 ("registry", "build", str(tmp_path), "--key", str(tmp_path / "k")),
                 ("depot", "build", str(spec), "--out", str(tmp_path / "o"))):
        res = cas(typo, *args, init=False)
        assert_one_line_error(res)
        assert str(typo) in res.err and "cas init" in res.err, (args, res.err)
        assert not os.path.lexists(typo)


def test_each_command_is_found_in_its_own_module() -> None:
    """The lazy group maps every command to the module defining it, so running one
    command imports only that module (not put's chunker for ``cas umount``)."""
    from casstore.cli import main as cli_main

    cli_main._register()
    for name, cmd in cli_main.cli.commands.items():
        want = cli_main.MODULE_OF.get(name, f"{name}_cmd")
        assert cmd.callback is not None and cmd.callback.__module__ == f"casstore.cli.{want}", name


@pytest.mark.parametrize("argv, heavy", [
    (["umount", "--help"], ["casstore.store.snapshot", "casstore.client.fuse.mount", "mfusepy",
                            "aiohttp", "prometheus_client"]),
    (["status", "--help"], ["casstore.store.snapshot", "mfusepy", "aiohttp"]),
    (["exec", "--help"], ["casstore.store.snapshot", "aiohttp", "archspec"]),
])
def test_short_commands_import_only_what_they_use(argv: list[str], heavy: list[str]) -> None:
    code = ("import sys\nfrom casstore.cli.main import main\n"
            f"sys.argv = ['cas', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    loaded = set(res.stderr.split())
    assert "casstore.cli.main" in loaded, res.stderr[-500:]
    assert not loaded.intersection(heavy), sorted(loaded.intersection(heavy))


def test_the_mount_path_imports_no_metrics_formatter_until_it_renders() -> None:
    """A mount (or a ``cas exec`` job) without metrics exporters never imports
    prometheus_client or http.server; the first render does."""
    code = ("import sys\nimport casstore.cli.exec_cmd, casstore.cli.mount_cmd\n"
            "import casstore.client.fuse.mount, casstore.client.fuse.ops\n"
            "from casstore.client.metrics import ClientMetrics\n"
            "m = ClientMetrics('/mnt', 'app', 3)\n"
            "before = ' '.join(sorted(sys.modules))\n"
            "text = m.render()\n"
            "print(before, file=sys.stderr)\n"
            "print('prometheus_client' in sys.modules, 'cas_client_revision' in text)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(res.stderr.split())
    assert "casstore.client.fuse.wiring" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "prometheus_client"
                or m in ("http.server", "aiohttp", "casstore.client.metrics_http")}
    assert res.stdout.split() == ["True", "True"]
