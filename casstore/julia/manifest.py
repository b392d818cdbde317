"""A user's Julia 1.5 environment (Project.toml + Manifest.toml) as build input.

Pkg 1.5 writes a Manifest as one array of tables per package name, each entry with
``uuid`` and, for a registered version, ``version`` and ``git-tree-sha1``; a path
package has ``path`` instead, a stdlib has neither.  Julia 1.6+ writes format 2.0
(``manifest_format``/``julia_version`` keys and a ``[deps]`` table), which Julia
1.5 cannot read: it is refused here with a one-line error rather than staged into
a depot that fails on every node.

Where Pkg puts a registered version: ``packages/NAME/SLUG``, where SLUG is
``Base.version_slug(uuid, sha1)``: CRC-32C of the uuid's 16 bytes (Julia's
``UInt128``, little-endian), continued over the 20 hash bytes, written in base 62.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import ManifestError, SpecPathError
from casstore.pkg.gittree import SHA1_RE, UUID_RE

SLUG_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?$")
_FORMAT2_KEYS = ("manifest_format", "julia_version")


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), continuing from ``crc`` like Julia's ``_crc32c``."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def slug(x: int, p: int = 5) -> str:
    out = []
    for _ in range(p):
        x, d = divmod(x, len(SLUG_CHARS))
        out.append(SLUG_CHARS[d])
    return "".join(out)


def version_slug(uuid: str, sha1: str, p: int = 5) -> str:
    """Julia 1.5's ``Base.version_slug(UUID(uuid), SHA1(sha1), p)``."""
    crc = crc32c(int(uuid.replace("-", ""), 16).to_bytes(16, "little"))
    return slug(crc32c(bytes.fromhex(sha1), crc), p)


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    uuid: str
    version: str | None
    tree_sha1: str | None  # registered versions
    path: str | None  # path (developed) packages
    deps: tuple[str, ...]  # dependency names

    @property
    def registered(self) -> bool:
        return self.tree_sha1 is not None

    def slug_path(self) -> str:
        """Depot-relative folder Pkg installs this registered version into."""
        assert self.tree_sha1 is not None
        return f"packages/{self.name}/{version_slug(self.uuid, self.tree_sha1)}"


@dataclass(frozen=True)
class UserEnvironment:
    project_path: Path
    manifest_path: Path
    direct: dict[str, str]  # Project [deps]: name -> uuid
    entries: dict[str, ManifestEntry]

    def closure(self, roots: list[str]) -> set[str]:
        """``roots`` and everything they depend on (names, stdlibs included)."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen or name not in self.entries:
                continue
            seen.add(name)
            todo.extend(self.entries[name].deps)
        return seen


def _load(path: Path, what: str) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise SpecPathError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} {path}: not valid TOML ({exc})") from None


def _entry(name: str, raw: object, where: str) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: [[{name}]] is not a table")
    uid = raw.get("uuid")
    if not isinstance(uid, str) or not UUID_RE.match(uid):
        raise ManifestError(f"{where}: {name} has no valid uuid")
    if "repo-url" in raw or "repo-rev" in raw:
        raise ManifestError(f"{where}: {name} is tracked from a git branch (repo-rev); "
                            "pin a registered version (Pkg.free) or list it as a path package")
    sha1, path, version = raw.get("git-tree-sha1"), raw.get("path"), raw.get("version")
    if sha1 is not None and (not isinstance(sha1, str) or not SHA1_RE.match(sha1)):
        raise ManifestError(f"{where}: {name} git-tree-sha1 {sha1!r} is not a git tree hash")
    if sha1 is not None and path is not None:
        raise ManifestError(f"{where}: {name} has both git-tree-sha1 and path")
    if version is not None and (not isinstance(version, str) or not _VERSION_RE.match(version)):
        raise ManifestError(f"{where}: {name} version {version!r} is not x.y.z")
    if sha1 is not None and version is None:
        raise ManifestError(f"{where}: {name} has a git-tree-sha1 but no version; "
                            "re-resolve the environment with Pkg")
    deps = raw.get("deps", [])
    if isinstance(deps, dict):  # Pkg writes a table when two deps share a name
        deps = list(deps)
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ManifestError(f"{where}: {name} deps must be a list of names")
    if path is not None and not isinstance(path, str):
        raise ManifestError(f"{where}: {name} path must be a string")
    return ManifestEntry(name, uid, version, sha1, path, tuple(deps))


def load_environment(project: Path, manifest: Path) -> UserEnvironment:
    """Parse and cross-check a Julia 1.5 Project.toml and Manifest.toml."""
    proj = _load(project, "project")
    man = _load(manifest, "manifest")
    if any(k in man for k in _FORMAT2_KEYS) or isinstance(man.get("deps"), dict):
        fmt = man.get("manifest_format", "2.0")
        made = man.get("julia_version", "1.6 or newer")
        raise ManifestError(f"{manifest}: manifest_format {fmt!r} was written by Julia {made}; "
                            "Julia 1.5 cannot read it: resolve the environment with Julia "
                            "1.5 (Pkg.resolve() or Pkg.instantiate()) and use that Manifest")
    entries: dict[str, ManifestEntry] = {}
    for name, arr in man.items():
        if not isinstance(arr, list) or len(arr) != 1:
            raise ManifestError(f"{manifest}: [[{name}]] must appear exactly once "
                                "(two packages with one name are not supported)")
        entries[name] = _entry(name, arr[0], str(manifest))
    direct = proj.get("deps", {})
    if not isinstance(direct, dict):
        raise ManifestError(f"{project}: [deps] must be a table")
    for name, uid in direct.items():
        e = entries.get(name)
        if e is None or e.uuid != uid:
            raise ManifestError(f"{project}: dependency {name} ({uid}) is not in "
                                f"{manifest.name}; run Pkg.resolve() with Julia 1.5")
    for e in entries.values():
        for d in e.deps:
            if d not in entries:
                raise ManifestError(f"{manifest}: {e.name} depends on {d}, which has no "
                                    "entry; run Pkg.resolve() with Julia 1.5")
    return UserEnvironment(project, manifest, dict(direct), entries)


def rewrite_paths(text: str, paths: dict[str, str]) -> str:
    """The manifest text with the ``path`` of the named packages replaced.

    Line-based on purpose: every other byte stays as the user's Pkg wrote it.
    """
    out, section = [], None
    for line in text.splitlines(keepends=True):
        head = re.match(r'^\s*\[\[\s*"?([^"\]]+)"?\s*\]\]\s*$', line)
        if head:
            section = head.group(1)
        elif section in paths and re.match(r"^\s*path\s*=", line):
            line = f'path = "{paths[section]}"\n'
        out.append(line)
    return "".join(out)
