"""A Julia package registry in memory, read from and written to its folder form.

The folder form is what Pkg reads (General's layout): ``Registry.toml`` naming the
registry and its packages, and per package ``Package.toml``, ``Versions.toml``
(version -> git tree SHA-1), ``Deps.toml`` and ``Compat.toml`` in the compressed
range format of :mod:`casstore.pkg.versions`.  In memory every version keeps its
own uncompressed deps and compat, so extending a registry recompresses from
scratch and a new version can never inherit an old range by accident.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import RegistryError, VersionConflict
from casstore.pkg.gittree import check_sha1
from casstore.pkg.versions import (
    CompatValue,
    Version,
    compress,
    decompress,
    parse_version,
    vstr,
)

GENERAL_NAME = "General"
GENERAL_UUID = "23338594-aafe-5451-b93e-139f81909106"
GENERAL_REPO = "https://github.com/JuliaRegistries/General.git"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class VersionInfo:
    """One registered version: its tree hash, deps (name -> uuid) and compat."""

    tree_sha1: str
    deps: dict[str, str] = field(default_factory=dict)
    compat: dict[str, CompatValue] = field(default_factory=dict)
    yanked: bool = False


@dataclass
class PackageInfo:
    name: str
    uuid: str
    repo: str
    path: str
    versions: dict[Version, VersionInfo] = field(default_factory=dict)


@dataclass
class Registry:
    name: str = GENERAL_NAME
    uuid: str = GENERAL_UUID
    repo: str = GENERAL_REPO
    description: str = "A Julia registry built by casstore"
    packages: dict[str, PackageInfo] = field(default_factory=dict)

    # -- changing it ---------------------------------------------------------------
    def add_version(self, name: str, uuid: str, repo: str, version: Version,
                    info: VersionInfo) -> bool:
        """Register one version; False if it is already there with the same tree."""
        if not _NAME_RE.match(name):
            raise RegistryError(f"invalid package name {name!r}")
        pkg = self.packages.get(uuid)
        if pkg is None:
            for other in self.packages.values():
                if other.name == name:
                    raise RegistryError(f"package {name}: the registry already has {name} "
                                        f"with uuid {other.uuid}, not {uuid}")
            pkg = self.packages[uuid] = PackageInfo(name, uuid, repo, _pkg_path(name))
        elif pkg.name != name:
            raise RegistryError(f"uuid {uuid} is registered as {pkg.name}, not {name}")
        old = pkg.versions.get(version)
        if old is not None:
            if old.tree_sha1 != info.tree_sha1:
                raise VersionConflict(
                    f"{name} {vstr(version)} is already registered with tree "
                    f"{old.tree_sha1}, the source has {info.tree_sha1}; tag a new version")
            return False
        pkg.versions[version] = info
        return True

    def version_count(self) -> int:
        return sum(len(p.versions) for p in self.packages.values())

    # -- folder form ---------------------------------------------------------------
    def write(self, folder: Path) -> None:
        """Write the registry folder (deterministic bytes for the same content)."""
        folder.mkdir(parents=True, exist_ok=True)
        head = {"name": self.name, "uuid": self.uuid, "repo": self.repo,
                "description": self.description}
        lines = [f"{k} = {_tstr(v)}" for k, v in head.items()] + ["", "[packages]"]
        for uuid in sorted(self.packages):
            p = self.packages[uuid]
            lines.append(f"{uuid} = {{ name = {_tstr(p.name)}, path = {_tstr(p.path)} }}")
        (folder / "Registry.toml").write_text("\n".join(lines) + "\n")
        for p in self.packages.values():
            self._write_package(folder / p.path, p)

    @staticmethod
    def _write_package(d: Path, p: PackageInfo) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "Package.toml").write_text(
            f"name = {_tstr(p.name)}\nuuid = {_tstr(p.uuid)}\nrepo = {_tstr(p.repo)}\n")
        versions = sorted(p.versions)
        out = []
        for v in versions:
            info = p.versions[v]
            out.append(f"[{_tstr(vstr(v))}]\ngit-tree-sha1 = {_tstr(info.tree_sha1)}\n"
                       + ("yanked = true\n" if info.yanked else ""))
        (d / "Versions.toml").write_text("\n".join(out))
        for fname, attr in (("Deps.toml", "deps"), ("Compat.toml", "compat")):
            data = {v: getattr(p.versions[v], attr) for v in versions}
            path = d / fname
            if any(data.values()):
                path.write_text(_tables(compress(data)))
            elif path.exists():
                path.unlink()

    @classmethod
    def load(cls, folder: Path) -> Registry:
        """Read a registry folder (ours or another's, e.g. a General checkout)."""
        top = _read_toml(folder / "Registry.toml")
        try:
            reg = cls(str(top["name"]), str(top["uuid"]), str(top["repo"]),
                      str(top.get("description", "")))
            entries = dict(top.get("packages", {}))
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"{folder}/Registry.toml lacks name, uuid or repo") from None
        for uuid, entry in entries.items():
            try:
                rel = str(entry["path"])
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise ValueError
                reg.packages[uuid] = _load_package(folder / rel, uuid, str(entry["name"]), rel)
            except (KeyError, TypeError, ValueError):
                raise RegistryError(f"{folder}: bad package entry {uuid}") from None
        return reg


def _load_package(d: Path, uuid: str, name: str, rel: str) -> PackageInfo:
    meta = _read_toml(d / "Package.toml")
    pkg = PackageInfo(name, uuid, str(meta.get("repo", "")), rel)
    table = _read_toml(d / "Versions.toml")
    for text, info in table.items():
        pkg.versions[parse_version(text)] = VersionInfo(
            check_sha1(str(info["git-tree-sha1"])), yanked=bool(info.get("yanked", False)))
    versions = sorted(pkg.versions)
    for fname, attr in (("Deps.toml", "deps"), ("Compat.toml", "compat")):
        if (d / fname).exists():
            for v, row in decompress(_read_toml(d / fname), versions).items():
                setattr(pkg.versions[v], attr, row)
    return pkg


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path} is missing") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path} is not valid TOML: {exc}") from None


def _pkg_path(name: str) -> str:
    return f"{name[0].upper()}/{name}"


def _tstr(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML escapes; UTF-8 kept)."""
    return json.dumps(text, ensure_ascii=False)


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _tstr(k)


def _tables(tables: dict[str, dict[str, object]]) -> str:
    out = []
    for label, row in tables.items():
        lines = [f"[{_tstr(label)}]"]
        for k, v in row.items():
            val = ("[" + ", ".join(_tstr(x) for x in v) + "]") if isinstance(v, list) else _tstr(v)
            lines.append(f"{_key(k)} = {val}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)
