"""Package sources: git bundles and repositories, one registered version per tag.

The version comes from the tag (``v1.2.3`` or ``1.2.3``), not only from Project.toml:
InvertedIndices 1.0.0, for one, was registered with no ``version`` field.  When the
Project does name a version it must agree with the tag.  Each tag's files are
checked out with ``git checkout-index`` (not ``git archive``, which would drop
``export-ignore`` files) and their git tree hash is recomputed and compared with
``TAG^{tree}``: a checkout that git filters changed (line endings, a submodule)
is refused rather than registered under a hash it does not have.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import RegistryError, TreeHashMismatch
from casstore.pkg.gittree import check_uuid, folder_tree_hash
from casstore.pkg.registry import VersionInfo
from casstore.pkg.versions import Version, parse_version, registry_compat, vstr

_GIT = ["git", "-c", "core.autocrlf=false", "-c", "core.symlinks=true",
        "-c", "advice.detachedHead=false"]


@dataclass
class SourceVersion:
    """One tag of one package, checked out and verified."""

    name: str
    uuid: str
    version: Version
    tag: str
    tree_sha1: str
    folder: Path
    info: VersionInfo
    origin: str = ""
    notes: list[str] = field(default_factory=list)


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Bundles and repositories, with folders of them expanded (sorted by name)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_file():
            out.append(p)
        elif _is_git_dir(p):
            out.append(p)
        elif p.is_dir():
            kids = sorted(k for k in p.iterdir() if k.suffix == ".bundle" or _is_git_dir(k))
            if not kids:
                raise RegistryError(f"{p}: no git bundles or repositories in this folder")
            out.extend(kids)
        else:
            raise RegistryError(f"{p}: no such file or folder")
    return out


def _is_git_dir(p: Path) -> bool:
    return p.is_dir() and ((p / ".git").exists() or (p / "HEAD").is_file()
                           and (p / "objects").is_dir())


def _git(gitdir: Path, *args: str, env: dict | None = None) -> str:
    pre = []
    if args[0] == "--work-tree":
        pre, args = list(args[:2]), args[2:]
    proc = subprocess.run(_GIT + ["--git-dir", str(gitdir), *pre, *args], capture_output=True,
                          env=dict(os.environ, **(env or {})), timeout=600)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RegistryError(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout.decode(errors="replace")


def read_source(src: Path, work: Path,
                known: frozenset[tuple[Version, str]] = frozenset()) -> list[SourceVersion]:
    """Every version tag of one bundle or repository, checked out under ``work``.

    Tags whose (version, tree hash) pair is in ``known`` (already registered with
    exactly that content) are skipped without a checkout, so rebuilding is cheap.
    """
    if src.is_file():
        gitdir = work / "git"
        subprocess.run(["git", "init", "-q", "--bare", str(gitdir)], check=True,
                       capture_output=True)
        try:
            _git(gitdir, "fetch", "-q", str(src.resolve()), "refs/tags/*:refs/tags/*")
        except RegistryError as exc:
            raise RegistryError(f"{src}: not a readable git bundle ({exc})") from None
    else:
        gitdir = src / ".git" if (src / ".git").exists() else src
    tags = [t for t in _git(gitdir, "for-each-ref", "--format=%(refname:short)",
                            "refs/tags").split() if _is_version_tag(t)]
    if not tags:
        raise RegistryError(f"{src}: no version tags (v1.2.3) to register")
    out = []
    for i, tag in enumerate(tags):
        tree = _git(gitdir, "rev-parse", f"{tag}^{{tree}}").strip()
        if (parse_version(tag), tree) not in known:
            out.append(_checkout(gitdir, src, tag, tree, work / f"tag-{i}"))
    return out


def _is_version_tag(tag: str) -> bool:
    try:
        parse_version(tag)
        return True
    except RegistryError:
        return False


def _checkout(gitdir: Path, src: Path, tag: str, tree: str, dest: Path) -> SourceVersion:
    when = int(_git(gitdir, "log", "-1", "--format=%ct", f"{tag}^{{commit}}").strip())
    env = {"GIT_INDEX_FILE": str(dest) + ".index"}
    dest.mkdir(parents=True)
    _git(gitdir, "read-tree", tree, env=env)
    _git(gitdir, "--work-tree", str(dest), "checkout-index", "-a", "-f", env=env)
    os.unlink(env["GIT_INDEX_FILE"])
    got = folder_tree_hash(dest)
    if got != tree:
        raise TreeHashMismatch(f"{src.name} {tag}: the checked-out files hash to {got}, "
                               f"git says the tag's tree is {tree} (filters or submodules?)")
    set_mtimes(dest, when)
    name, uuid, version, info = _project(dest, src, tag, tree)
    remote = ""
    if not src.is_file():
        try:
            remote = _git(gitdir, "config", "--get", "remote.origin.url").strip()
        except RegistryError:
            remote = ""
    return SourceVersion(name, uuid, version, tag, tree, dest, info, remote)


def set_mtimes(root: Path, when: int) -> None:
    """Every path gets the tag's commit time, so one tag always gives one store tree."""
    ns = when * 1_000_000_000
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(ns, ns))


def _project(folder: Path, src: Path, tag: str,
             tree: str) -> tuple[str, str, Version, VersionInfo]:
    for fname in ("JuliaProject.toml", "Project.toml"):
        path = folder / fname
        if path.is_file():
            break
    else:
        raise RegistryError(f"{src.name} {tag}: no Project.toml at the tag")
    try:
        proj = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{src.name} {tag}: Project.toml is not valid TOML: {exc}") from None
    name, uuid = proj.get("name"), str(proj.get("uuid", "")).lower()
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{src.name} {tag}: Project.toml has no name")
    try:
        check_uuid(uuid)
    except Exception:
        raise RegistryError(f"{name} {tag}: Project.toml has no valid uuid") from None
    version = parse_version(tag)
    if "version" in proj:
        try:
            pv = parse_version(str(proj["version"]))
        except RegistryError:
            raise RegistryError(f"{name} {tag}: Project.toml version {proj['version']!r} "
                                "is not a plain x.y.z version") from None
        if pv != version:
            raise RegistryError(f"{name}: tag {tag} says {vstr(version)} but Project.toml says "
                                f"{vstr(pv)}; fix the tag or the Project")
    deps = {str(k): str(v).lower() for k, v in dict(proj.get("deps", {})).items()}
    for k, v in deps.items():
        try:
            check_uuid(v)
        except Exception:
            raise RegistryError(f"{name} {tag}: dependency {k} has a bad uuid {v!r}") from None
    compat = {}
    for k, v in dict(proj.get("compat", {})).items():
        if k != "julia" and k not in deps:
            continue  # compat of test-only extras: not part of the registry entry
        try:
            compat[str(k)] = registry_compat(str(v))
        except RegistryError as exc:
            raise RegistryError(f"{name} {tag}: compat for {k}: {exc}") from None
    return name, uuid, version, VersionInfo(tree, deps, compat)
