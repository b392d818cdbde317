"""Parse and validate a depot SPEC.toml (see docs/JULIA.md for the format).

Everything is checked here, before the builder copies a byte or starts Julia: a
typo in a key, a wrong type, a path that does not exist, an unknown Julia version,
variant or CPU target each give one line naming the field and their own exit code
(casstore.errors, 40-45).  A build that starts is a build whose inputs are sound.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from casstore.errors import SpecError, SpecPathError, UnknownVariant
from casstore.julia.manifest import UserEnvironment, load_environment
from casstore.julia.versions import JuliaLayout, check_cpu_target, cpu_target_for, layout_for
from casstore.releases.variants import all_levels

__all__ = ["DepotSpec", "JobSpec", "PackageSpec", "SpecError", "VariantSpec", "load_spec"]

DEFAULT_PREFIX = "/var/cache/casstore/julia-{version}"
DEFAULT_EPOCH = 1577836800  # 2020-01-01T00:00:00Z, mtime of every staged file
DEFAULT_VERSION = "1.5.3"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")

# The schema: table -> key -> expected TOML type.  Unknown keys are errors, so a
# misspelt `sysimge = false` cannot silently bake a package into the image.
_TOP = {"julia": dict, "environment": dict, "packages": list, "files": dict,
        "workload": dict, "variants": list, "baseline": str, "build": dict, "job": dict,
        "sources": dict}
_JULIA = {"version": str, "prefix": str}
_ENVIRONMENT = {"name": str, "project": str, "manifest": str, "sysimage": list}
_SOURCES = {"store": str, "server": str, "bundles": str, "trusted_key": str}
_PACKAGE = {"name": str, "uuid": str, "version": str, "path": str, "tarball": str,
            "sysimage": bool}
_WORKLOAD = {"script": str}
_VARIANT = {"name": str, "cpu_target": str}
_BUILD = {"epoch": int}
_JOB = {"command": list, "setup": list}
_TYPE_NAMES = {dict: "a table", list: "an array", str: "a string", bool: "true or false",
               int: "an integer"}


@dataclass(frozen=True)
class PackageSpec:
    name: str
    uuid: str
    version: str
    source: Path  # folder or tarball
    sysimage: bool


@dataclass(frozen=True)
class SourcesSpec:
    """Where registered packages come from: exactly one of the three."""

    store: str | None = None  # a registry-NAME release in the store
    server: str | None = None  # a Pkg server URL
    bundles: Path | None = None  # a folder of git bundles
    trusted_key: str | None = None  # public key (hex) for the store release


@dataclass(frozen=True)
class UserEnvSpec:
    """A user's environment as input: Project + Manifest, and the image roots."""

    project: Path
    manifest: Path
    sources: SourcesSpec
    sysimage: tuple[str, ...] | None  # None: every direct dependency
    parsed: UserEnvironment


@dataclass(frozen=True)
class VariantSpec:
    name: str
    cpu_target: str


@dataclass(frozen=True)
class JobSpec:
    """The job `cas depot abcheck` runs when given none: Julia arguments whose first
    element is a depot-relative script; `setup` runs once before, in the same folder."""

    command: tuple[str, ...]
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class DepotSpec:
    path: Path
    julia_version: str
    julia_prefix: Path
    layout: JuliaLayout
    env_name: str
    packages: tuple[PackageSpec, ...]
    files: dict[str, Path]  # depot-relative destination -> source
    workload: str  # depot-relative script
    variants: tuple[VariantSpec, ...]
    baseline: str
    epoch: int
    job: JobSpec | None = None
    user_env: UserEnvSpec | None = None

    def sysimage_packages(self) -> list[PackageSpec]:
        return [p for p in self.packages if p.sysimage]


def _table(raw: Any, where: str, schema: dict[str, type]) -> dict[str, Any]:
    """`raw` as a table holding only `schema`'s keys, each of its type."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a table")
    for key, value in raw.items():
        want = schema.get(key)
        if want is None:
            raise SpecError(f"{where}: unknown key {key!r} (known: {', '.join(schema)})")
        # bool is an int in Python; TOML keeps them apart, so do we
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise SpecError(f"{where}.{key} must be {_TYPE_NAMES[want]}, "
                            f"not {type(value).__name__} {value!r}")
    return raw


def _tables(raw: list, where: str, schema: dict[str, type]) -> list[dict[str, Any]]:
    return [_table(t, f"{where}[{i}]", schema) for i, t in enumerate(raw)]


def _need(table: dict, key: str, where: str) -> Any:
    if key not in table:
        raise SpecError(f"{where}: missing key {key!r}")
    return table[key]


def _rel_depot_path(p: str, where: str) -> str:
    pp = PurePosixPath(p)
    if pp.is_absolute() or ".." in pp.parts or not pp.parts:
        raise SpecPathError(f"{where}: {p!r} must be a relative path inside the depot")
    return str(pp)


def _existing(base: Path, rel: str, where: str, *, folder: bool | None = None) -> Path:
    source = (base / rel).resolve()
    if not source.exists():
        raise SpecPathError(f"{where}: {source} does not exist")
    if folder is True and not source.is_dir():
        raise SpecPathError(f"{where}: {source} is not a folder")
    if folder is False and not source.is_file():
        raise SpecPathError(f"{where}: {source} is not a file")
    return source


def _package(t: dict, base: Path, i: int) -> PackageSpec:
    where = f"packages[{i}]"
    name = _need(t, "name", where)
    if not _IDENT.match(name):
        raise SpecError(f"{where}.name {name!r} is not a Julia package name")
    try:
        uid = str(uuid.UUID(_need(t, "uuid", where)))
    except ValueError as e:
        raise SpecError(f"{where}.uuid: {e}") from None
    if ("path" in t) == ("tarball" in t):
        raise SpecError(f"{where}: needs exactly one of 'path' (folder) or 'tarball'")
    if "path" in t:
        source = _existing(base, t["path"], f"{where}.path", folder=True)
    else:
        source = _existing(base, t["tarball"], f"{where}.tarball", folder=False)
    return PackageSpec(name, uid, _need(t, "version", where), source, t.get("sysimage", True))


def _variants(raw: list, layout: JuliaLayout) -> tuple[VariantSpec, ...]:
    out = []
    for i, v in enumerate(_tables(raw, "variants", _VARIANT)):
        name = _need(v, "name", f"variants[{i}]")
        if name not in all_levels():
            raise UnknownVariant(f"variants[{i}].name {name!r} is not a CPU level nodes "
                                 f"choose from (known: {', '.join(all_levels())})")
        target = v["cpu_target"] if "cpu_target" in v else cpu_target_for(layout, name)
        check_cpu_target(layout, target)
        out.append(VariantSpec(name, target))
    if len({v.name for v in out}) != len(out):
        raise SpecError("variant names must be unique")
    return tuple(out)


def _source_of(depot_rel: str, files: dict[str, Path],
               packages: tuple[PackageSpec, ...]) -> Path | None:
    """Where a depot-relative path comes from, if the spec says (None: unknown)."""
    provided = dict(files)
    provided.update({f"dev/{p.name}": p.source for p in packages if p.source.is_dir()})
    rel = PurePosixPath(depot_rel)
    for dst, src in provided.items():
        d = PurePosixPath(dst)
        if rel == d or d in rel.parents:
            return src.joinpath(*rel.relative_to(d).parts)
    return None


def _depot_script(rel: str, where: str, files: dict[str, Path],
                  packages: tuple[PackageSpec, ...]) -> str:
    """A depot-relative script that the spec's files or packages provide."""
    rel = _rel_depot_path(rel, where)
    src = _source_of(rel, files, packages)
    if src is None:
        raise SpecPathError(f"{where}: {rel!r} is not provided by [files] or a package")
    if not src.is_file():
        raise SpecPathError(f"{where}: {rel!r} comes from {src}, which is not a file")
    return rel


def _argv(raw: list, where: str, files: dict[str, Path],
          packages: tuple[PackageSpec, ...]) -> tuple[str, ...]:
    if not raw or not all(isinstance(a, str) for a in raw):
        raise SpecError(f"{where} must be a non-empty array of strings")
    return (_depot_script(raw[0], f"{where}[0]", files, packages), *raw[1:])


def _job(raw: dict, files: dict[str, Path], packages: tuple[PackageSpec, ...]) -> JobSpec:
    t = _table(raw, "job", _JOB)
    command = _argv(_need(t, "command", "job"), "job.command", files, packages)
    setup = _argv(t["setup"], "job.setup", files, packages) if "setup" in t else ()
    return JobSpec(command, setup)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not valid TOML (not UTF-8)") from None
    except OSError as exc:
        raise SpecPathError(f"{path}: cannot read the spec ({exc.strerror})") from None


def _sources(raw: dict, base: Path) -> SourcesSpec:
    t = _table(raw, "sources", _SOURCES)
    kinds = [k for k in ("store", "server", "bundles") if k in t]
    if len(kinds) != 1:
        raise SpecError("sources: needs exactly one of 'store' (a registry-NAME release), "
                        "'server' (a Pkg server URL) or 'bundles' (a folder)")
    key = None
    if "trusted_key" in t:
        from casstore.releases.release import parse_public

        text = t["trusted_key"]
        path = base / text
        key = parse_public(path.read_text() if path.is_file() else text)
    if "server" in t and not t["server"].startswith(("http://", "https://")):
        raise SpecError(f"sources.server {t['server']!r} must be an http(s) URL")
    return SourcesSpec(
        store=t.get("store"), server=t.get("server"),
        bundles=_existing(base, t["bundles"], "sources.bundles", folder=True)
        if "bundles" in t else None, trusted_key=key)


def _user_env(env: dict, raw: dict, base: Path) -> UserEnvSpec | None:
    """The [environment] project/manifest input, with its [sources]; None if absent."""
    has = [k for k in ("project", "manifest") if k in env]
    if not has:
        if "sysimage" in env or "sources" in raw:
            raise SpecError("environment.sysimage and [sources] need environment.project "
                            "and environment.manifest")
        return None
    if len(has) != 2:
        raise SpecError("environment: 'project' and 'manifest' go together")
    if "sources" not in raw:
        raise SpecError("environment.manifest needs a [sources] table saying where the "
                        "registered packages come from")
    names = env.get("sysimage")
    if names is not None and not all(isinstance(n, str) and _IDENT.match(n) for n in names):
        raise SpecError("environment.sysimage must be an array of package names")
    project = _existing(base, env["project"], "environment.project", folder=False)
    manifest = _existing(base, env["manifest"], "environment.manifest", folder=False)
    return UserEnvSpec(project, manifest, _sources(raw["sources"], base),
                       None if names is None else tuple(names),
                       load_environment(project, manifest))


def _prefix(julia: dict, version: str, base: Path) -> Path:
    """The Julia prefix; one the spec names must exist (a default may be installed later)."""
    if "prefix" in julia:
        return _existing(base, julia["prefix"], "julia.prefix", folder=True)
    env = os.environ.get("CAS_JULIA_PREFIX")
    return Path(env or DEFAULT_PREFIX.format(version=version))


def load_spec(path: Path) -> DepotSpec:
    """Read SPEC.toml; relative source paths are relative to its folder."""
    path = Path(path).resolve()
    base = path.parent
    raw = _table(_read_toml(path), str(path.name), _TOP)
    julia = _table(raw.get("julia", {}), "julia", _JULIA)
    version = julia.get("version", DEFAULT_VERSION)
    layout = layout_for(version)
    pkgs = tuple(_package(t, base, i)
                 for i, t in enumerate(_tables(raw.get("packages", []), "packages", _PACKAGE)))
    if len({p.name for p in pkgs}) != len(pkgs):
        raise SpecError("package names must be unique")
    files_raw = raw.get("files", {})
    for dst, src in files_raw.items():
        if not isinstance(src, str):
            raise SpecError(f"files.{dst} must be a string (a path), not {src!r}")
    files = {_rel_depot_path(dst, f"files.{dst}"): _existing(base, src, f"files.{dst}")
             for dst, src in files_raw.items()}
    wl = _table(_need(raw, "workload", "spec"), "workload", _WORKLOAD)
    workload = _depot_script(_need(wl, "script", "workload"), "workload.script", files, pkgs)
    variants = _variants(raw.get("variants", []), layout)
    if not variants:
        raise SpecError("at least one [[variants]] entry is required")
    baseline = raw.get("baseline", variants[0].name)
    if baseline not in {v.name for v in variants}:
        raise UnknownVariant(f"baseline {baseline!r} is not one of the variants")
    env_tbl = _table(raw.get("environment", {}), "environment", _ENVIRONMENT)
    env_name = env_tbl.get("name", layout.default_env)
    user_env = _user_env(env_tbl, raw, base)
    if not _ENV_NAME.match(env_name) or env_name in (".", ".."):
        raise SpecError(f"environment.name {env_name!r} must be one folder name")
    epoch = _table(raw.get("build", {}), "build", _BUILD).get("epoch", DEFAULT_EPOCH)
    if not 0 <= epoch < 2**33:
        raise SpecError(f"build.epoch {epoch} is not a time in seconds since 1970")
    return DepotSpec(
        path=path, julia_version=version, julia_prefix=_prefix(julia, version, base),
        layout=layout, env_name=env_name, packages=pkgs, files=files, workload=workload,
        variants=variants, baseline=baseline, epoch=epoch,
        job=_job(raw["job"], files, pkgs) if "job" in raw else None, user_env=user_env,
    )

