"""cas registry build: real bundles -> a Julia registry that git and Pkg 1.5 agree with."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from pkg_helpers import (
    BUNDLES,
    PACKAGES_TOML,
    git,
    julia,
    needs_bundles,
    packages,
    unreachable_repo_urls,
)

from casstore.format.objects import ObjectId
from casstore.pkg.gittree import folder_tree_hash, store_tree_hash
from casstore.pkg.versions import compress, decompress, registry_compat, semver_spec
from casstore.store.snapshot import put_paths
from casstore.store.writable import Store
from casstore.view.reader import TreeReader, root_entry

from helpers import assert_one_line_error, cas

EXTRA_SPECS = ["0.0.3", "0.0", "0", "~0.3.2", "~1", "^0.2.3", ">= 0.5", "≥ 1.2.3", "<2",
               "< 0.3", "=1.2.3", "0.7 - 1.3", "1.2 - 2", "0.15, 0.16, 0.17", "1, 0.1.1"]


def git_write_tree(folder: Path) -> str:
    """git's own tree hash of a folder (an independent check of ours)."""
    work = folder.parent / (folder.name + ".git-check")
    shutil.copytree(folder, work, symlinks=True)
    git(work, "init", "-q")
    git(work, "add", "-A", "-f")
    out = git(work, "write-tree").strip()
    shutil.rmtree(work)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A store with registry-General built from all 32 shared bundles."""
    if not PACKAGES_TOML.exists():
        pytest.skip("shared bundles missing")
    tmp = tmp_path_factory.mktemp("reg")
    store = tmp / "store"
    cas(None, "keygen", str(tmp / "k"), check=True)
    urls = unreachable_repo_urls(tmp / "urls.toml")
    res = cas(store, "--json", "registry", "build", str(BUNDLES), "--key", str(tmp / "k"),
              "--repo-urls", str(urls), check=True)
    out = json.loads(res.out)
    show = json.loads(cas(store, "--json", "release", "show", "registry-General",
                          "--trusted-key", str(tmp / "k.pub"), check=True).out)
    regdir = tmp / "registry"
    cas(store, "get", show["meta"]["registry_tree"], str(regdir), check=True)
    return {"tmp": tmp, "store": store, "out": out, "meta": show["meta"], "regdir": regdir,
            "key": tmp / "k", "urls": urls}


# -- version ranges -------------------------------------------------------------------
def test_compat_conversion_examples() -> None:
    assert registry_compat("1.2") == "1.2.0-1"
    assert registry_compat("0.12, 1") == ["0.12", "1"]
    assert registry_compat("0.1.1, 1") == ["0.1.1-0.1", "1"]
    assert registry_compat("0.15, 0.16, 0.17") == "0.15-0.17"
    assert registry_compat("0.0.3") == "0.0.3"
    assert registry_compat(">= 0.5") == "0.5.0-*"


def test_compression_round_trips_random_tables() -> None:
    rnd = random.Random(7)
    for _ in range(300):
        versions = sorted({(rnd.randint(0, 2), rnd.randint(0, 3), rnd.randint(0, 3))
                           for _ in range(rnd.randint(1, 12))})
        data = {v: {k: rnd.choice(["a", "b", ["x", "y"]]) for k in "PQR" if rnd.random() < 0.7}
                for v in versions}
        packed = compress(data)  # raises if it does not decompress to the same tables
        assert decompress(packed, versions) == {v: d for v, d in data.items() if d}


@pytest.mark.julia
@needs_bundles
def test_ranges_and_registry_read_by_real_pkg(built: dict, tmp_path: Path) -> None:
    """Pkg 1.5 itself parses every compat string as we convert it, and reads our
    compressed Deps.toml/Compat.toml back to exactly each package's Project data."""
    specs = sorted({v for p in packages().values() for v in p.get("compat", {}).values()}
                   | set(EXTRA_SPECS))
    expected = {}
    for p in packages().values():
        deps = p.get("deps", {})
        compat = {k: str(_julia_print(semver_spec(v))) for k, v in p.get("compat", {}).items()
                  if k == "julia" or k in deps}
        expected[p["uuid"]] = {"version": p["version"], "deps": deps, "compat": compat}
    (tmp_path / "expected.json").write_text(json.dumps({"specs": specs, "pkgs": expected}))
    code = f'''
    using Pkg
    const T = Pkg.TOML
    import Pkg.Types: VersionSpec, semver_spec
    import Pkg.Operations: load_package_data
    spec_file = "{tmp_path / 'specs.txt'}"
    open(spec_file, "w") do io
        for s in readlines("{tmp_path / 'specs.in'}")
            println(io, s, " => ", string(semver_spec(String(s))))
        end
    end
    reg = "{built["regdir"]}"
    out = Dict{{String,Any}}()
    for (uuid, e) in T.parsefile(joinpath(reg, "Registry.toml"))["packages"]
        path = joinpath(reg, e["path"])
        vers = [VersionNumber(v) for v in keys(T.parsefile(joinpath(path, "Versions.toml")))]
        deps = load_package_data(Base.UUID, joinpath(path, "Deps.toml"), vers)
        compat = load_package_data(VersionSpec, joinpath(path, "Compat.toml"), vers)
        v = only(vers)
        out[uuid] = Dict("version" => string(v),
            "deps" => Dict(k => string(x) for (k, x) in get(deps, v, Dict())),
            "compat" => Dict(k => string(x) for (k, x) in get(compat, v, Dict())))
    end
    open(io -> T.print(io, out), "{tmp_path / 'got.toml'}", "w")
    '''
    (tmp_path / "specs.in").write_text("\n".join(specs) + "\n")
    proc = julia(code, tmp_path / "depot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in (tmp_path / "specs.txt").read_text().splitlines():
        spec, want = line.split(" => ")
        assert _julia_print(semver_spec(spec)) == want, spec
    import tomllib
    got = tomllib.loads((tmp_path / "got.toml").read_text())
    for table in list(got.values()) + list(expected.values()):
        table.setdefault("deps", {})  # Julia's TOML.print leaves empty tables out
        table.setdefault("compat", {})
    assert got == expected


def _julia_print(ranges) -> str:
    """How Pkg prints a VersionSpec."""
    parts = [str(r) for r in ranges]
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


# -- git tree hashes ------------------------------------------------------------------
def test_tree_hash_matches_git_for_modes_links_and_empty_dirs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty" / "deeper").mkdir(parents=True)  # git has no empty dirs: skipped
    (src / "a" / "b" / "x.jl").write_text("x = 1\n")
    (src / "a.txt").write_text("sorts before the dir a/ in git order\n")
    (src / "run").write_text("#!/bin/sh\n")
    os.chmod(src / "run", 0o755)
    os.symlink("a/b/x.jl", src / "link")
    (src / "big").write_bytes(random.Random(1).randbytes(5 << 20))
    want = git_write_tree(src)
    assert folder_tree_hash(src) == want
    store = Store.init(tmp_path / "store")
    tree = put_paths(store, [src])
    assert store_tree_hash(TreeReader(store), root_entry(tree)) == want


@pytest.mark.slow
@needs_bundles
def test_registry_matches_packages_toml(built: dict) -> None:
    import tomllib
    reg = built["regdir"]
    top = tomllib.loads((reg / "Registry.toml").read_text())
    assert top["uuid"] == "23338594-aafe-5451-b93e-139f81909106" and top["name"] == "General"
    pk = packages()
    assert {e["name"] for e in top["packages"].values()} == set(pk)
    for uuid, e in top["packages"].items():
        p = pk[e["name"]]
        assert uuid == p["uuid"]
        versions = tomllib.loads((reg / e["path"] / "Versions.toml").read_text())
        assert versions == {p["version"]: {"git-tree-sha1": p["tree_sha1"]}}, e["name"]
        meta = tomllib.loads((reg / e["path"] / "Package.toml").read_text())
        assert meta["repo"].endswith(f"/{e['name']}.jl.git")
    # InvertedIndices' Project.toml at its tag names 1.1.0; the version comes from the tag
    assert built["out"]["added"].count("InvertedIndices@1.1.0") == 1
    # the registry hash Pkg asks for is git's own hash of the registry folder
    assert built["meta"]["registry_tree_sha1"] == git_write_tree(reg) == folder_tree_hash(reg)


@pytest.mark.slow
@needs_bundles
def test_registry_folder_reads_back_losslessly(built: dict, tmp_path: Path) -> None:
    """Load + write gives the same bytes (and hash): what extending a registry relies on."""
    from casstore.pkg.registry import Registry
    Registry.load(built["regdir"]).write(tmp_path / "again")
    assert folder_tree_hash(tmp_path / "again") == built["meta"]["registry_tree_sha1"]


@pytest.mark.slow
@needs_bundles
def test_from_folder_seeds_a_new_registry(built: dict, tmp_path: Path) -> None:
    out = json.loads(cas(tmp_path / "s", "--json", "registry", "build", "--from",
                         str(built["regdir"]), "--key", str(built["key"]), check=True).out)
    assert out["revision"] == 1 and out["versions"] == len(packages())
    assert out["tree_sha1"] == built["meta"]["registry_tree_sha1"]
    again = cas(built["store"], "registry", "build", "--from", str(built["regdir"]),
                "--key", str(built["key"]))
    assert_one_line_error(again)
    assert "extended automatically" in again.err


@pytest.mark.slow
@needs_bundles
def test_every_version_is_in_the_store_by_its_tree_hash(built: dict) -> None:
    from casstore.pkg.content import read_package_map
    store = Store.open(built["store"])
    reader = TreeReader(store)
    pkmap = read_package_map(reader, ObjectId.parse(built["meta"]["packages"]))
    want = {(p["uuid"], p["tree_sha1"]) for p in packages().values()}
    assert set(pkmap) == want
    for (_uuid, sha1), tree in pkmap.items():
        assert store_tree_hash(reader, root_entry(tree)) == sha1


@pytest.mark.slow
@needs_bundles
def test_same_input_gives_no_new_revision(built: dict) -> None:
    res = cas(built["store"], "--json", "registry", "build", str(BUNDLES / "Tables.bundle"),
              "--key", str(built["key"]), check=True)
    out = json.loads(res.out)
    assert out["unchanged"] is True and out["revision"] is None
    assert out["tree_sha1"] == built["meta"]["registry_tree_sha1"]


# -- extending, and bad input ---------------------------------------------------------
def _pkg_repo(tmp: Path, name: str, uuid: str, versions: list[str],
              project_version: str | None = "same") -> Path:
    repo = tmp / name
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "src").mkdir()
    for v in versions:
        pv = v if project_version == "same" else project_version
        head = f'name = "{name}"\nuuid = "{uuid}"\n' + (f'version = "{pv}"\n' if pv else "")
        (repo / "Project.toml").write_text(head + '[compat]\njulia = "1"\n')
        (repo / "src" / f"{name}.jl").write_text(f"module {name}\nv() = \"{v}\"\nend\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", v)
        git(repo, "tag", f"v{v}")
    return repo


U1 = "11111111-2222-4333-8444-555555555555"


@pytest.mark.slow
def test_new_version_gives_new_revision_and_old_stays(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    store = tmp_path / "store"
    repo = _pkg_repo(tmp_path, "Foo", U1, ["0.1.0"])
    first = json.loads(cas(store, "--json", "registry", "build", str(repo), "--name", "Site",
                           "--uuid", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "--repo",
                           "https://example.org/Site.git", "--key", str(tmp_path / "k"),
                           check=True).out)
    git(repo, "commit", "-q", "--allow-empty", "-m", "noop")
    (repo / "Project.toml").write_text(
        f'name = "Foo"\nuuid = "{U1}"\nversion = "0.2.0"\n[compat]\njulia = "1"\n')
    git(repo, "commit", "-q", "-am", "0.2.0")
    git(repo, "tag", "v0.2.0")
    second = json.loads(cas(store, "--json", "registry", "build", str(repo), "--name", "Site",
                            "--key", str(tmp_path / "k"), check=True).out)
    assert (first["revision"], second["revision"]) == (1, 2)
    assert second["added"] == ["Foo@0.2.0"]
    assert first["tree_sha1"] != second["tree_sha1"]
    import tomllib
    for rev, n in ((1, 1), (2, 2)):
        meta = json.loads(cas(store, "--json", "release", "show", f"registry-Site@{rev}",
                              check=True).out)["meta"]
        out = tmp_path / f"r{rev}"
        cas(store, "get", meta["registry_tree"], str(out), check=True)
        assert len(tomllib.loads((out / "F/Foo/Versions.toml").read_text())) == n
        assert folder_tree_hash(out) == meta["registry_tree_sha1"]


def test_version_from_tag_when_project_has_none(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    repo = _pkg_repo(tmp_path, "NoVer", U1, ["1.0.0"], project_version=None)
    out = json.loads(cas(tmp_path / "s", "--json", "registry", "build", str(repo), "--key",
                         str(tmp_path / "k"), check=True).out)
    assert out["added"] == ["NoVer@1.0.0"]


def test_project_version_disagreeing_with_tag_is_refused(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    repo = _pkg_repo(tmp_path, "Liar", U1, ["1.0.0"], project_version="1.0.1")
    res = cas(tmp_path / "s", "registry", "build", str(repo), "--key", str(tmp_path / "k"))
    assert_one_line_error(res)
    assert res.code == 50 and "Liar" in res.err and "1.0.1" in res.err


def test_checkout_that_git_filters_change_is_refused(tmp_path: Path) -> None:
    """A tag whose files git rewrites on checkout (eol=crlf) does not hash to its tree."""
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    repo = tmp_path / "Crlf"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitattributes").write_text("*.jl text eol=crlf\n")
    (repo / "src").mkdir()
    (repo / "src" / "Crlf.jl").write_text("module Crlf\nend\n")
    (repo / "Project.toml").write_text(f'name = "Crlf"\nuuid = "{U1}"\nversion = "1.0.0"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    git(repo, "tag", "v1.0.0")
    res = cas(tmp_path / "s", "registry", "build", str(repo), "--key", str(tmp_path / "k"))
    assert_one_line_error(res)
    assert res.code == 51 and "v1.0.0" in res.err


def test_same_version_with_other_content_is_refused(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    a = _pkg_repo(tmp_path, "Dup", U1, ["1.0.0"])
    cas(tmp_path / "s", "registry", "build", str(a), "--key", str(tmp_path / "k"), check=True)
    (a / "src" / "Dup.jl").write_text("module Dup\nchanged() = 1\nend\n")
    git(a, "commit", "-q", "-am", "rewrite")
    git(a, "tag", "-f", "v1.0.0")
    res = cas(tmp_path / "s", "registry", "build", str(a), "--key", str(tmp_path / "k"))
    assert_one_line_error(res)
    assert res.code == 52 and "Dup 1.0.0" in res.err


def test_not_a_bundle_is_a_one_line_error(tmp_path: Path) -> None:
    cas(None, "keygen", str(tmp_path / "k"), check=True)
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a bundle")
    res = cas(tmp_path / "s", "registry", "build", str(junk), "--key", str(tmp_path / "k"))
    assert_one_line_error(res)
    assert "junk.bundle" in res.err
