"""Stage a user's environment (Project + Manifest) into a depot, where Pkg puts things.

Registered versions go to ``packages/NAME/SLUG`` (Pkg's own slug), the registry to
``registries/NAME``, path packages (a site's own) to ``dev/NAME``; the environment
holds the user's Project.toml byte for byte and their Manifest.toml with only the
``path`` of path packages pointing into ``dev/``.  So ``Pkg.status()`` on a node
shows the versions the user resolved, and a writable depot stacked in front
(``JULIA_DEPOT_PATH=/scratch:/depot``) finds these packages and does not fetch
them again.

Also decides which packages go into the system image: the roots the spec lists
(default: every direct dependency) and all they depend on, since an image cannot
hold a package without its dependencies.  The direct dependencies left out get
per-variant precompile caches.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import ManifestError, PackageMismatch
from casstore.julia.environment import check_package, stdlib_projects
from casstore.julia.filetree import unpack_package
from casstore.julia.manifest import UserEnvironment, load_environment, rewrite_paths
from casstore.julia.namespace import DEPOT_MOUNT
from casstore.julia.pkgsources import BundleSource, PackageSource, ServerSource, StoreSource
from casstore.julia.spec import DepotSpec, UserEnvSpec
from casstore.pkg.gittree import SHA1_RE

Log = Callable[[str], None]


@dataclass
class ImagePlan:
    """What the sysimage loads, what it must not, what gets .ji caches instead."""

    roots: list[str]  # `using` in the output script (direct deps)
    excluded_uuids: list[str]  # must not be loaded while generating the image
    precompile: list[str]  # direct deps outside the image
    packages: list[dict] = field(default_factory=list)  # for meta.json

    @classmethod
    def from_folders(cls, spec: DepotSpec) -> ImagePlan:
        return cls([p.name for p in spec.packages if p.sysimage],
                   [p.uuid for p in spec.packages if not p.sysimage],
                   [p.name for p in spec.packages if not p.sysimage],
                   [{"name": p.name, "uuid": p.uuid, "version": p.version,
                     "sysimage": p.sysimage} for p in spec.packages])


def open_source(ue: UserEnvSpec, work: Path, store, trusted: list[str]) -> PackageSource:
    s = ue.sources
    if s.store is not None:
        if store is None:
            raise ManifestError("sources.store needs a store (cas --store or CAS_STORE)")
        keys = list(trusted) + ([s.trusted_key] if s.trusted_key else [])
        return StoreSource(store, s.store, keys)
    if s.server is not None:
        return ServerSource(s.server)
    assert s.bundles is not None
    return BundleSource(s.bundles, work / "bundles")


def _plan(spec: DepotSpec, ue: UserEnvSpec, env: UserEnvironment,
          stdlibs: set[str]) -> ImagePlan:
    direct = [n for n in sorted(env.direct) if n not in stdlibs]
    off = {p.name for p in spec.packages if not p.sysimage}
    roots = list(ue.sysimage) if ue.sysimage is not None else [n for n in direct
                                                               if n not in off]
    for n in roots:
        if n not in env.direct:
            raise ManifestError(f"environment.sysimage: {n} is not a dependency in "
                                f"{ue.project.name}; the image loads direct dependencies")
    image = env.closure(roots)
    outside = [e for n, e in sorted(env.entries.items()) if n not in image and n not in stdlibs]
    meta = [{"name": e.name, "uuid": e.uuid, "version": e.version,
             "git_tree_sha1": e.tree_sha1, "path": e.path is not None,
             "sysimage": e.name in image}
            for n, e in sorted(env.entries.items()) if n not in stdlibs]
    return ImagePlan(sorted(roots), [e.uuid for e in outside],
                     [n for n in direct if n not in image], meta)


def stage_user_env(spec: DepotSpec, root: Path, work: Path, store, trusted: list[str],
                   log: Log) -> ImagePlan:
    """Fetch and place every package of the user's manifest; returns the image plan."""
    ue = spec.user_env
    assert ue is not None
    env = ue.parsed
    stdlib_dir = spec.julia_prefix / spec.layout.stdlib
    stdlibs = {n for n, p in stdlib_projects(stdlib_dir).items()
               if n in env.entries and env.entries[n].uuid == p.get("uuid")}
    ours = {p.name: p for p in spec.packages}
    source = open_source(ue, work, store, trusted)
    dev_paths = {}
    for name, e in sorted(env.entries.items()):
        if name in stdlibs:
            if e.registered or e.path is not None:
                raise ManifestError(f"{ue.manifest}: {name} is a Julia {spec.julia_version} "
                                    "stdlib but the manifest pins a version of it")
            continue
        if e.registered:
            dest = root / e.slug_path()
            dest.parent.mkdir(parents=True, exist_ok=True)
            source.fetch(e, dest)
            _check_registered(e.name, e.uuid, dest)
        elif e.path is not None:
            pkg = ours.get(name)
            if pkg is None:
                raise ManifestError(f"{name} is a path package in the manifest (path = "
                                    f"{e.path!r}); list it in [[packages]] with its folder")
            if pkg.uuid != e.uuid or (e.version is not None and e.version != pkg.version):
                raise PackageMismatch(f"{name}: the spec says {pkg.uuid} {pkg.version}, the "
                                      f"manifest {e.uuid} {e.version}")
            unpack_package(pkg.source, root / "dev" / name)
            check_package(pkg, root / "dev" / name)
            dev_paths[name] = f"{DEPOT_MOUNT}/dev/{name}"  # survives copying the env
        else:
            raise ManifestError(f"{ue.manifest}: {name} is neither a stdlib of Julia "
                                f"{spec.julia_version} nor registered (git-tree-sha1) nor a "
                                "path package; was it made by another Julia version?")
    extra = sorted(set(ours) - set(dev_paths))
    if extra:
        raise ManifestError(f"[[packages]] {', '.join(extra)} not in the manifest; add them "
                            "with Pkg.develop(path=...) and use that Manifest")
    log(f"[stage sources] {sum(e.registered for e in env.entries.values())} registered "
        f"packages from {source.label}, {len(dev_paths)} path packages")
    envdir = root / "environments" / spec.env_name
    envdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ue.project, envdir / "Project.toml")
    text = ue.manifest.read_text()
    (envdir / "Manifest.toml").write_text(rewrite_paths(text, dev_paths) if dev_paths else text)
    if load_environment(envdir / "Project.toml", envdir / "Manifest.toml").entries.keys() \
            != env.entries.keys():
        raise ManifestError(f"{ue.manifest}: could not point its path packages into dev/")
    arts = stage_artifacts(root, [root / e.slug_path() for e in env.entries.values()
                                  if e.registered] + [root / "dev" / n for n in dev_paths],
                           source)
    if arts:
        log(f"[stage sources] {arts} artifacts into artifacts/")
    name = source.registry(root / "registries")
    log(f"[stage sources] registry {name} into registries/{name}")
    return _plan(spec, ue, env, stdlibs)


def artifact_hashes(pkg: Path) -> list[tuple[str, str]]:
    """(name, git-tree-sha1) of every artifact a package's Artifacts.toml lists for this
    platform (x86_64 Linux, glibc), lazy ones included: a node has no network to
    fetch them later."""
    for fname in ("JuliaArtifacts.toml", "Artifacts.toml"):
        path = pkg / fname
        if path.is_file():
            break
    else:
        return []
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{pkg.name}: {fname} is not valid TOML ({exc})") from None
    out = []
    for name, spec in doc.items():
        entries = spec if isinstance(spec, list) else [spec]
        for e in entries:
            if not isinstance(e, dict):
                raise ManifestError(f"{pkg.name}: {fname} entry {name} is not a table")
            if isinstance(spec, list) and (e.get("arch") != "x86_64" or e.get("os") != "linux"
                                           or e.get("libc", "glibc") != "glibc"):
                continue
            sha1 = e.get("git-tree-sha1")
            if not isinstance(sha1, str) or not SHA1_RE.match(sha1):
                raise ManifestError(f"{pkg.name}: {fname} entry {name} has no valid "
                                    "git-tree-sha1")
            out.append((name, sha1))
    return out


def stage_artifacts(root: Path, pkgs: list[Path], source: PackageSource) -> int:
    """Artifacts of the staged packages into artifacts/<git-tree-sha1>, where Pkg
    looks; one copy per hash (the store dedups across releases anyway)."""
    count = 0
    for pkg in sorted(pkgs):
        owner = pkg.parent.name if pkg.parent.parent.name == "packages" else pkg.name
        for name, sha1 in artifact_hashes(pkg):
            dest = root / "artifacts" / sha1
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            source.artifact(owner, name, sha1, dest)
            count += 1
    return count


def _check_registered(name: str, uuid: str, folder: Path) -> None:
    """The tree under a manifest's hash is that package (a version field is optional:
    InvertedIndices 1.0.0 was registered without one; the manifest names it)."""
    from casstore.julia.environment import read_project

    proj = read_project(folder)
    if proj.get("name") != name or str(proj.get("uuid", "")).lower() != uuid:
        raise PackageMismatch(f"{name}: the tree under its git-tree-sha1 is package "
                              f"{proj.get('name')} {proj.get('uuid')}; the manifest is wrong")
    if not (folder / "src" / f"{name}.jl").is_file():
        raise PackageMismatch(f"{name}: src/{name}.jl missing in its registered tree")
