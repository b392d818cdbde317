"""cas depot build from a user's Project.toml + Manifest.toml.

A small real subset of the shared bundles is registered in a store, served by the
real `cas serve`, resolved by real Pkg 1.5.3 into a Manifest, and built into a
depot with ONE variant whose image holds two packages; the rest get .ji caches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from pkg_helpers import (
    BUNDLES,
    PACKAGES_TOML,
    git,
    julia,
    make_artifact,
    packages,
    tiny_release,
    unreachable_repo_urls,
)

from casstore.errors import ManifestError, PackageUnavailable
from casstore.julia.filetree import link_tree
from casstore.julia.install import ensure_julia
from casstore.julia.manifest import load_environment, rewrite_paths, version_slug
from casstore.julia.namespace import namespaces_available, run_bound
from casstore.pkg.gittree import folder_tree_hash

from helpers import assert_one_line_error, cas

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PACKAGES_TOML.exists(), reason="shared bundles missing")]
needs_ns = pytest.mark.skipif(not namespaces_available(), reason="needs root and unshare")

REPO = Path(__file__).resolve().parents[1]
CASLORENTZ = REPO / "examples" / "packages" / "CasLorentz"
DIRECT = ["LorentzVectors", "JSON", "OrderedCollections", "DataAPI"]
SUBSET = DIRECT + ["Parsers", "Reexport"]
EXTRA = "Reexport"  # registered, not in the manifest: a node adds it on top
JULIA = "/depot/julia/bin/julia"
WORKLOAD = """\
using LorentzVectors
import CasLorentz
v = LorentzVectors.LorentzVector(10.0, 1.0, 2.0, 3.0)
w = CasLorentz.LorentzVector(10.0, 1.0, 2.0, 3.0)
println("sum=", v.t + v.x + v.y + v.z, " m=", round(CasLorentz.mass(w), digits=4))
"""
ADD = """
using Pkg
Pkg.add([{direct}])
Pkg.develop(PackageSpec(path={path}))
"""


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> dict:
    """registry-General from the subset's bundles, and the real `cas serve` over it."""
    from test_pkgserver import ProcessServer

    tmp = tmp_path_factory.mktemp("mfreg")
    store = tmp / "store"
    cas(None, "keygen", str(tmp / "k"), check=True)
    urls = unreachable_repo_urls(tmp / "urls.toml")
    cas(store, "registry", "build", *[str(BUNDLES / f"{n}.bundle") for n in SUBSET],
        "--key", str(tmp / "k"), "--repo-urls", str(urls), check=True)
    with ProcessServer(store, tmp / "k.pub", tmp / "cache", tmp / "serve.log") as srv:
        yield {"tmp": tmp, "store": store, "key": tmp / "k", "pub": tmp / "k.pub",
               "url": srv.url}


@pytest.fixture(scope="module")
def resolved(reg: dict) -> Path:
    """Project + Manifest exactly as real Pkg 1.5.3 writes them against `cas serve`."""
    depot = reg["tmp"] / "resolve-depot"
    code = ADD.format(direct=", ".join(f'"{n}"' for n in DIRECT), path=f'"{CASLORENTZ}"')
    proc = julia(code, depot, reg["url"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = reg["tmp"] / "env"
    env.mkdir()
    for f in ("Project.toml", "Manifest.toml"):
        shutil.copy(depot / "environments" / "v1.5" / f, env / f)
    return env


def write_spec(folder: Path, env: Path, sources: str, *, sysimage: str = "") -> Path:
    (folder / "work.jl").write_text(WORKLOAD)
    spec = folder / "spec.toml"
    spec.write_text(f"""
[environment]
project = "{env / 'Project.toml'}"
manifest = "{env / 'Manifest.toml'}"
{sysimage}

[sources]
{sources}

[[packages]]
name = "CasLorentz"
uuid = "cf38cf71-618a-4d29-a318-b95d30191d35"
version = "0.3.1"
path = "{CASLORENTZ}"

[files]
"jobs/work.jl" = "work.jl"

[workload]
script = "jobs/work.jl"

[[variants]]
name = "x86-64"
cpu_target = "x86-64"
""")
    return spec


def store_sources(reg: dict) -> str:
    return f'store = "registry-General"\ntrusted_key = "{reg["pub"]}"'


@pytest.fixture(scope="module")
def built(reg: dict, resolved: Path) -> dict:
    if not namespaces_available():
        pytest.skip("needs root and unshare")
    ensure_julia()
    folder = reg["tmp"] / "spec"
    folder.mkdir()
    spec = write_spec(folder, resolved, store_sources(reg),
                      sysimage='sysimage = ["LorentzVectors", "CasLorentz"]')
    out = reg["tmp"] / "out"
    res = cas(reg["store"], "--json", "depot", "build", str(spec), "--out", str(out),
              timeout=3600)
    assert res.code == 0, res.err[-4000:]
    view = reg["tmp"] / "view"
    link_tree(out / "root", view)
    link_tree(out / "variants" / "x86-64", view)
    return {"out": out, "root": out / "root", "view": view, "env": resolved,
            "meta": json.loads((out / "meta.json").read_text())}


def run_view(built: dict, code: str, scratch: Path, **env: str):
    scratch.mkdir(exist_ok=True)
    return run_bound(built["view"], [JULIA, "--startup-file=no", "-e", code],
                     {"JULIA_DEPOT_PATH": f"{scratch}:/depot", **env}, readonly=True,
                     timeout=900)


# -- no Julia ------------------------------------------------------------------------------
def test_slug_matches_julia() -> None:
    """Our slug equals Julia 1.5.3's Base.version_slug for every shared package."""
    pk = list(packages().values())
    code = "using UUIDs; for (u, h) in zip(ARGS[1:2:end], ARGS[2:2:end]); " \
           "println(Base.version_slug(UUID(u), Base.SHA1(h))); end"
    args = [x for p in pk for x in (p["uuid"], p["tree_sha1"])]
    prefix = ensure_julia()
    out = subprocess.run([str(prefix / "bin" / "julia"), "--startup-file=no", "-e", code,
                          *args], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == [version_slug(p["uuid"], p["tree_sha1"]) for p in pk]


def test_manifest_format_2_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Project.toml").write_text('[deps]\n')
    (tmp_path / "Manifest.toml").write_text(
        'julia_version = "1.6.7"\nmanifest_format = "2.0"\n\n[deps]\n')
    with pytest.raises(ManifestError, match="Julia 1.6.7.*Julia 1.5 cannot read it"):
        load_environment(tmp_path / "Project.toml", tmp_path / "Manifest.toml")


def test_rewrite_paths_changes_only_that_line() -> None:
    text = ('[[A]]\ngit-tree-sha1 = "x"\nuuid = "u"\n\n[[CasX]]\npath = "/home/me/CasX"\n'
            'uuid = "v"\nversion = "0.1.0"\n')
    out = rewrite_paths(text, {"CasX": "/depot/dev/CasX"})
    assert out == text.replace('"/home/me/CasX"', '"/depot/dev/CasX"')


# -- bad input: one line, its own exit code, names the package (no Julia run) -------------
def _tiny_repo(folder: Path, version_in_project: bool, body: str = "1") -> str:
    """A package Tiny tagged v0.1.0; returns its tag's tree hash."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    (folder / "src").mkdir()
    ver = 'version = "0.1.0"\n' if version_in_project else ""
    (folder / "Project.toml").write_text(
        f'name = "Tiny"\nuuid = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"\n{ver}')
    (folder / "src" / "Tiny.jl").write_text(f"module Tiny\nx() = {body}\nend\n")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "v0.1.0")
    git(folder, "tag", "v0.1.0")
    return git(folder, "rev-parse", "v0.1.0^{tree}").strip()


def _tiny_env(folder: Path, sha1: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Project.toml").write_text('[deps]\nTiny = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"\n')
    (folder / "Manifest.toml").write_text(
        f'# This file is machine-generated - editing it directly is not advised\n\n'
        f'[[Tiny]]\ngit-tree-sha1 = "{sha1}"\nuuid = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"\n'
        f'version = "0.1.0"\n')
    return folder


def _spec_without_caslorentz(spec: Path) -> None:
    text = spec.read_text()
    start = text.index("[[packages]]")
    spec.write_text(text[:start] + text[text.index("[files]"):])


@needs_ns
def test_bad_manifest_version_gives_36(tmp_path: Path) -> None:
    env = _tiny_env(tmp_path / "env", "0" * 40)
    (env / "Manifest.toml").write_text('manifest_format = "2.0"\n[deps]\n')
    spec = write_spec(tmp_path, env, f'bundles = "{tmp_path}"')
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 36 and "Julia 1.5" in res.err


@needs_ns
def test_tree_not_in_store_gives_37(reg: dict, tmp_path: Path) -> None:
    p = packages()["LorentzVectors"]
    env = tmp_path / "env"
    env.mkdir()
    (env / "Project.toml").write_text(f'[deps]\nLorentzVectors = "{p["uuid"]}"\n')
    (env / "Manifest.toml").write_text(
        f'[[LorentzVectors]]\ngit-tree-sha1 = "{"1" * 40}"\n'
        f'uuid = "{p["uuid"]}"\nversion = "0.4.2"\n')
    spec = write_spec(tmp_path, env, store_sources(reg))
    _spec_without_caslorentz(spec)
    res = cas(reg["store"], "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 37 and "LorentzVectors 0.4.2" in res.err and "registry" in res.err


@needs_ns
def test_bundle_tag_with_other_tree_gives_38(tmp_path: Path) -> None:
    real = _tiny_repo(tmp_path / "a" / "Tiny", True, "1")
    bundles = tmp_path / "bundles"
    _tiny_repo(bundles / "Tiny", True, "2")  # the same tag, re-made with other content
    env = _tiny_env(tmp_path / "env", real)
    spec = write_spec(tmp_path, env, f'bundles = "{bundles}"')
    _spec_without_caslorentz(spec)
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 38 and "Tiny 0.1.0" in res.err and "tag v0.1.0" in res.err


@needs_ns
def test_path_package_without_version_gives_45(tmp_path: Path) -> None:
    pkg = tmp_path / "CasLorentz"
    shutil.copytree(CASLORENTZ, pkg)
    proj = (pkg / "Project.toml").read_text()
    (pkg / "Project.toml").write_text(proj.replace('version = "0.3.1"\n', ""))
    env = tmp_path / "env"
    env.mkdir()
    uid = "cf38cf71-618a-4d29-a318-b95d30191d35"
    (env / "Project.toml").write_text(f'[deps]\nCasLorentz = "{uid}"\n')
    (env / "Manifest.toml").write_text(
        f'[[CasLorentz]]\npath = "{pkg}"\nuuid = "{uid}"\nversion = "0.3.1"\n')
    spec = write_spec(tmp_path, env, f'bundles = "{tmp_path}"')
    spec.write_text(spec.read_text().replace(f'path = "{CASLORENTZ}"', f'path = "{pkg}"'))
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 45 and "CasLorentz: Project.toml has no version" in res.err


def test_registered_version_without_project_version_is_staged(tmp_path: Path) -> None:
    """InvertedIndices 1.0.0's case: the version comes from the manifest and the tag."""
    from casstore.julia.builder import stage_sources
    from casstore.julia.spec import load_spec

    ensure_julia()
    bundles = tmp_path / "bundles"
    sha1 = _tiny_repo(bundles / "Tiny", False)
    env = _tiny_env(tmp_path / "env", sha1)
    spec = write_spec(tmp_path, env, f'bundles = "{bundles}"')
    _spec_without_caslorentz(spec)
    (tmp_path / "work.jl").write_text("using Tiny\n")
    root = tmp_path / "root"
    plan = stage_sources(load_spec(spec), root, tmp_path / "work", log=lambda m: None)
    staged = root / "packages" / "Tiny" / version_slug("5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                                                         sha1)
    assert folder_tree_hash(staged) == sha1
    assert plan.roots == ["Tiny"] and plan.precompile == []
    versions = tomllib.loads((root / "registries" / "General" / "T" / "Tiny" /
                              "Versions.toml").read_text())
    assert versions == {"0.1.0": {"git-tree-sha1": sha1}}


# -- the built depot, with real Julia -------------------------------------------------------
@pytest.mark.julia
@pytest.mark.slow
def test_packages_where_pkg_puts_them_and_env_unchanged(built: dict) -> None:
    root, env = built["root"], built["env"]
    man = load_environment(env / "Project.toml", env / "Manifest.toml")
    reg = [e for e in man.entries.values() if e.registered]
    assert sorted(e.name for e in reg) == sorted(SUBSET[:-1])
    for e in reg:
        assert folder_tree_hash(root / e.slug_path()) == e.tree_sha1
    denv = root / "environments" / "v1.5"
    assert (denv / "Project.toml").read_bytes() == (env / "Project.toml").read_bytes()
    got = (denv / "Manifest.toml").read_text()
    assert got == rewrite_paths((env / "Manifest.toml").read_text(),
                                {"CasLorentz": "/depot/dev/CasLorentz"})
    assert '"/depot/dev/CasLorentz"' in got
    info = tomllib.loads((root / "registries" / "General" / ".tree_info.toml").read_text())
    assert (root / "registries" / "General" / "Registry.toml").is_file()
    assert len(info["git-tree-sha1"]) == 40
    pk = {p["name"]: p for p in built["meta"]["packages"]}
    assert {n for n, p in pk.items() if p["sysimage"]} == {"LorentzVectors", "CasLorentz"}
    assert built["meta"]["variants"]["x86-64"]["validated"] is True


@pytest.mark.julia
@pytest.mark.slow
def test_node_loads_from_image_and_caches_and_status_shows_versions(built: dict,
                                                                    tmp_path: Path) -> None:
    code = """
    in_image(n) = any(k -> k.name == n, keys(Base.loaded_modules))
    println("IMAGE=", in_image("LorentzVectors"), ",", in_image("CasLorentz"), ",",
            in_image("JSON"))
    using LorentzVectors, CasLorentz, JSON, OrderedCollections, DataAPI
    for n in ("JSON", "LorentzVectors")
        println("PATH ", n, "=", Base.locate_package(Base.identify_package(n)))
    end
    println("JSON=", JSON.json(Dict("a" => 1)))
    using Pkg; Pkg.status()
    """
    scratch = tmp_path / "scratch"
    proc = run_view(built, code, scratch, JULIA_DEBUG="loading", JULIA_PKG_OFFLINE="true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "IMAGE=true,true,false" in proc.stdout
    assert 'JSON={"a":1}' in proc.stdout
    p = packages()
    for n in ("JSON", "LorentzVectors"):
        slug = version_slug(p[n]["uuid"], p[n]["tree_sha1"])
        assert f"PATH {n}=/depot/packages/{n}/{slug}/src/{n}.jl" in proc.stdout
    for n in DIRECT:
        assert f"{n} v{p[n]['version']}" in out
    assert "CasLorentz v0.3.1 `/depot/dev/CasLorentz`" in out
    assert "Rejecting" not in out and "Precompiling" not in out
    assert not (scratch / "compiled").exists()


@pytest.mark.julia
@pytest.mark.slow
def test_stacked_writable_depot_adds_one_package_and_reuses_the_rest(
        built: dict, reg: dict, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    code = f"""
    using Pkg
    mkpath("{scratch}/environments")
    cp("/depot/environments/v1.5", "{scratch}/environments/v1.5")
    Pkg.activate("{scratch}/environments/v1.5")
    Pkg.add("{EXTRA}")
    using {EXTRA}, JSON, LorentzVectors
    println("ADDED ", {EXTRA})
    """
    proc = run_view(built, code, scratch, JULIA_PKG_SERVER=reg["url"],
                    JULIA_PKG_PRECOMPILE_AUTO="0", no_proxy="127.0.0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ADDED {EXTRA}" in proc.stdout
    assert sorted(os.listdir(scratch / "packages")) == [EXTRA]
    assert not (scratch / "registries").exists()



@pytest.mark.julia
@pytest.mark.slow
def test_pkg_add_of_a_package_newer_than_the_depots_registry(
        built: dict, reg: dict, tmp_path: Path) -> None:
    """Crayons is registered (a new revision of registry-General) after the depot was
    built, so /depot's registry lacks it.  After ``eval "$(cas env --online)"`` a plain
    ``Pkg.add`` on the stacked depot finds and installs it; /depot stays untouched."""
    new = "Crayons"
    assert new not in SUBSET
    cas(reg["store"], "registry", "build",
        *[str(BUNDLES / f"{n}.bundle") for n in [*SUBSET, new]], "--key", str(reg["key"]),
        "--repo-urls", str(unreachable_repo_urls(tmp_path / "urls.toml")), check=True)
    depot_reg = built["view"] / "registries" / "General" / "Registry.toml"
    assert new not in depot_reg.read_text()

    def add(scratch: Path, setup: str):
        code = f"""
        using Pkg
        Pkg.activate("{scratch}/environments/v1.5")
        Pkg.add("{new}")
        using {new}
        println("ADDED ", {new})
        """
        script = f'{setup} && exec /depot/julia/bin/julia --startup-file=no -e "$CODE"'
        return run_bound(built["view"], ["sh", "-c", script],
                         {"PY": sys.executable, "PYTHONPATH": str(REPO), "S": str(scratch),
                          "CODE": code, "JULIA_PKG_SERVER": reg["url"],
                          "JULIA_PKG_PRECOMPILE_AUTO": "0", "no_proxy": "127.0.0.1"},
                         readonly=True, timeout=900)

    # The stacked depot alone (no registry in the scratch depot): Pkg's own error.
    plain = add(tmp_path / "plain", 'mkdir -p "$S" && export JULIA_DEPOT_PATH="$S:/depot"')
    assert plain.returncode != 0 and "ADDED" not in plain.stdout
    assert "registry" in plain.stderr, plain.stderr[-2000:]
    scratch = tmp_path / "scratch"
    proc = add(scratch, 'eval "$("$PY" -m casstore env --online --mountpoint /depot '
                        '--scratch "$S")"')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"ADDED {new}" in proc.stdout
    assert sorted(os.listdir(scratch / "packages")) == [new]
    reg_dir = scratch / "registries" / "General"
    assert reg_dir.is_dir() and not reg_dir.is_symlink()  # updated into the scratch depot
    assert new in (reg_dir / "Registry.toml").read_text()


# -- artifacts, and the Pkg server as a source (staging only, plain Julia) -----------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Tiny 0.1.0 with an artifact, registered with it, served, resolved by real Pkg."""
    from test_pkgserver import ProcessServer

    tmp = tmp_path_factory.mktemp("mftiny")
    art = make_artifact(tmp / "artifact")
    art_sha1 = folder_tree_hash(art)
    tiny_release(tmp / "Tiny", "0.1.0", art_sha1)
    store = tmp / "store"
    cas(None, "keygen", str(tmp / "k"), check=True)
    urls = unreachable_repo_urls(tmp / "urls.toml")
    cas(store, "registry", "build", str(tmp / "Tiny"), "--artifact", str(art), "--key",
        str(tmp / "k"), "--repo-urls", str(urls), check=True)
    with ProcessServer(store, tmp / "k.pub", tmp / "cache", tmp / "serve.log") as srv:
        proc = julia('using Pkg; Pkg.add("Tiny")', tmp / "resolve-depot", srv.url)
        assert proc.returncode == 0, proc.stderr[-3000:]
        env = tmp / "env"
        env.mkdir()
        for f in ("Project.toml", "Manifest.toml"):
            shutil.copy(tmp / "resolve-depot" / "environments" / "v1.5" / f, env / f)
        yield {"tmp": tmp, "store": store, "pub": tmp / "k.pub", "url": srv.url,
               "art_sha1": art_sha1, "env": env}


def _stage(tmp_path: Path, env: Path, sources: str, store=None):
    from casstore.julia.builder import stage_sources
    from casstore.julia.spec import load_spec

    spec = write_spec(tmp_path, env, sources)
    _spec_without_caslorentz(spec)
    (tmp_path / "work.jl").write_text("using Tiny\n")
    root = tmp_path / "root"
    plan = stage_sources(load_spec(spec), root, tmp_path / "work", store, log=lambda m: None)
    return root, plan


@pytest.mark.julia
def test_artifact_from_store_resolves_with_no_network(tiny: dict, tmp_path: Path) -> None:
    from casstore.store.writable import Store

    root, plan = _stage(tmp_path, tiny["env"], store_sources(tiny), Store.open(tiny["store"]))
    assert (root / "artifacts" / tiny["art_sha1"] / "hello.txt").is_file()
    assert folder_tree_hash(root / "artifacts" / tiny["art_sha1"]) == tiny["art_sha1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")
           and k != "LD_LIBRARY_PATH"}
    env.update(JULIA_DEPOT_PATH=f"{tmp_path / 'scratch'}:{root}", JULIA_PKG_OFFLINE="true",
               JULIA_PROJECT=str(root / "environments" / "v1.5"), JULIA_PKG_SERVER="")
    code = 'using Tiny; print("HELLO=", Tiny.hello())'
    proc = subprocess.run([str(ensure_julia() / "bin" / "julia"), "--startup-file=no", "-e",
                           code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HELLO=hello from an artifact" in proc.stdout
    assert not (tmp_path / "scratch" / "artifacts").exists()  # nothing was downloaded


def test_pkg_server_as_source(tiny: dict, tmp_path: Path) -> None:
    root, plan = _stage(tmp_path, tiny["env"], f'server = "{tiny["url"]}"')
    man = load_environment(tiny["env"] / "Project.toml", tiny["env"] / "Manifest.toml")
    e = man.entries["Tiny"]
    assert folder_tree_hash(root / e.slug_path()) == e.tree_sha1
    assert (root / "artifacts" / tiny["art_sha1"] / "hello.txt").is_file()
    with urllib.request.urlopen(tiny["url"] + "/registries", timeout=60) as r:
        served = r.read().decode().split("/")[-1].strip()
    info = tomllib.loads((root / "registries" / "General" / ".tree_info.toml").read_text())
    assert info["git-tree-sha1"] == served
    assert plan.roots == ["Tiny"]


def test_pkg_server_without_the_tree_gives_37(tiny: dict, tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    shutil.copy(tiny["env"] / "Project.toml", env / "Project.toml")
    man = (tiny["env"] / "Manifest.toml").read_text()
    sha1 = load_environment(tiny["env"] / "Project.toml",
                            tiny["env"] / "Manifest.toml").entries["Tiny"].tree_sha1
    (env / "Manifest.toml").write_text(man.replace(sha1, "2" * 40))
    with pytest.raises(PackageUnavailable, match="Tiny 0.1.0: .* has no tree 2222"):
        _stage(tmp_path, env, f'server = "{tiny["url"]}"')


@needs_ns
def test_spec_sources_and_sysimage_roots_are_checked(tiny: dict, tmp_path: Path) -> None:
    """Two sources at once, and an image root that is no direct dependency."""
    spec = write_spec(tmp_path, tiny["env"], f'server = "{tiny["url"]}"\nbundles = "{tmp_path}"')
    _spec_without_caslorentz(spec)
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 40 and "exactly one of" in res.err
    spec = write_spec(tmp_path, tiny["env"], f'server = "{tiny["url"]}"',
                      sysimage='sysimage = ["Pkg"]')
    _spec_without_caslorentz(spec)
    res = cas(tmp_path / "store", "-q", "depot", "build", str(spec), "--out", str(tmp_path / "o"))
    assert_one_line_error(res)
    assert res.code == 36 and "sysimage: Pkg is not a dependency" in res.err
