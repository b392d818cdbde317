"""Parse and validate a depot SPEC.toml (see docs/JULIA.md for the format)."""

from __future__ import annotations

import os
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from casstore.julia.versions import JuliaLayout, cpu_target_for, layout_for

DEFAULT_PREFIX = "/var/cache/casstore/julia-{version}"
DEFAULT_EPOCH = 1577836800  # 2020-01-01T00:00:00Z, mtime of every staged file


class SpecError(ValueError):
    """The spec file is malformed or inconsistent with the package sources."""


@dataclass(frozen=True)
class PackageSpec:
    name: str
    uuid: str
    version: str
    source: Path  # folder or tarball
    sysimage: bool


@dataclass(frozen=True)
class VariantSpec:
    name: str
    cpu_target: str


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

    def sysimage_packages(self) -> list[PackageSpec]:
        return [p for p in self.packages if p.sysimage]


def _need(table: dict, key: str, where: str):
    if key not in table:
        raise SpecError(f"{where}: missing key {key!r}")
    return table[key]


def _rel_depot_path(p: str, where: str) -> str:
    pp = PurePosixPath(p)
    if pp.is_absolute() or ".." in pp.parts or not pp.parts:
        raise SpecError(f"{where}: {p!r} must be a relative path inside the depot")
    return str(pp)


def _package(t: dict, base: Path, i: int) -> PackageSpec:
    where = f"packages[{i}]"
    name = _need(t, "name", where)
    try:
        uid = str(uuid.UUID(_need(t, "uuid", where)))
    except ValueError as e:
        raise SpecError(f"{where}: bad uuid: {e}") from None
    src = t.get("path") or t.get("tarball")
    if not src:
        raise SpecError(f"{where}: needs 'path' (folder) or 'tarball'")
    source = (base / src).resolve()
    if not source.exists():
        raise SpecError(f"{where}: {source} does not exist")
    return PackageSpec(name, uid, str(_need(t, "version", where)), source,
                       bool(t.get("sysimage", True)))


def _variants(raw: list, layout: JuliaLayout) -> tuple[VariantSpec, ...]:
    out = []
    for i, v in enumerate(raw):
        name = _need(v, "name", f"variants[{i}]")
        target = v.get("cpu_target") or cpu_target_for(layout, name)
        out.append(VariantSpec(name, target))
    if len({v.name for v in out}) != len(out):
        raise SpecError("variant names must be unique")
    return tuple(out)


def load_spec(path: Path) -> DepotSpec:
    """Read SPEC.toml; relative source paths are relative to its folder."""
    path = Path(path).resolve()
    base = path.parent
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    julia = raw.get("julia", {})
    version = str(julia.get("version", "1.5.3"))
    layout = layout_for(version)
    prefix = julia.get("prefix") or os.environ.get("CAS_JULIA_PREFIX") \
        or DEFAULT_PREFIX.format(version=version)
    pkgs = tuple(_package(t, base, i) for i, t in enumerate(raw.get("packages", [])))
    if len({p.name for p in pkgs}) != len(pkgs):
        raise SpecError("package names must be unique")
    files = {_rel_depot_path(dst, "files"): (base / src).resolve()
             for dst, src in raw.get("files", {}).items()}
    wl = raw.get("workload", {})
    variants = _variants(raw.get("variants", []), layout)
    if not variants:
        raise SpecError("at least one variant is required")
    baseline = raw.get("baseline", variants[0].name)
    if baseline not in {v.name for v in variants}:
        raise SpecError(f"baseline {baseline!r} is not a variant")
    return DepotSpec(
        path=path, julia_version=version, julia_prefix=Path(prefix), layout=layout,
        env_name=raw.get("environment", {}).get("name", layout.default_env),
        packages=pkgs, files=files,
        workload=_rel_depot_path(_need(wl, "script", "workload"), "workload"),
        variants=variants, baseline=baseline,
        epoch=int(raw.get("build", {}).get("epoch", DEFAULT_EPOCH)),
    )
