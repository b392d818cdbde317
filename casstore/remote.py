"""The fetching layer: one interface for every place objects can come from.

The FUSE client and ``cas get`` read through :class:`ObjectSource`.  A local store
directory (possibly on a read-only CVMFS or NFS mount) is the first
implementation; an HTTP remote is a second one, not a rewrite.  Sources return
*stored* bytes; :func:`fetch` verifies them, so no source is trusted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Protocol

from casstore.errors import NotFound, ObjectMissing, StoreError
from casstore.objects import ObjectId, ObjType, decode

RELEASE_SUFFIX = ".release"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_ref_name(name: str) -> str:
    """Ref and release names are path components; keep them boring."""
    if not _NAME_RE.match(name):
        raise StoreError(f"invalid name {name!r} (letters, digits and . _ + - only)")
    return name


class ObjectSource(Protocol):
    """Where stored objects and release documents are read from."""

    def read_stored(self, oid: ObjectId) -> bytes:
        """The stored bytes of an object; raise ObjectMissing if absent."""
        ...

    def release_revisions(self, name: str) -> list[int]:
        """Revisions published under ``name``, ascending."""
        ...

    def read_release(self, name: str, revision: int) -> bytes:
        """The signed release document bytes."""
        ...

    def release_names(self) -> list[str]:
        ...


def fetch(source: ObjectSource, oid: ObjectId, expect: ObjType | None = None) -> bytes:
    """Read and verify an object; never returns bytes that fail their hash."""
    _kind, raw = decode(oid, source.read_stored(oid), expect)
    return raw


def check_store_format(root: Path) -> None:
    """Refuse a store written in a format version this reader does not know."""
    try:
        doc = json.loads((root / "casstore.json").read_text())
    except FileNotFoundError:
        return  # a bare mirror of objects/ and releases/ is still readable
    except (OSError, ValueError):
        raise StoreError(f"{root}/casstore.json is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != "casstore":
        raise StoreError(f"{root} is not a casstore store (bad casstore.json)")
    if doc.get("version") != 1:
        raise StoreError(f"{root}: unsupported store format version {doc.get('version')}")


def object_path(root: Path, oid: ObjectId) -> Path:
    h = oid.hex
    return root / "objects" / h[:2] / h[2:]


def release_path(root: Path, name: str, revision: int) -> Path:
    return root / "releases" / check_ref_name(name) / f"{revision:012d}{RELEASE_SUFFIX}"


class LocalSource:
    """A store directory read as plain files; never writes (it may be read-only)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "objects").is_dir():
            raise StoreError(f"{self.root} is not a casstore store (no objects/ folder)")
        check_store_format(self.root)

    def read_stored(self, oid: ObjectId) -> bytes:
        try:
            with open(object_path(self.root, oid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(f"object {oid} is missing from {self.root}") from None

    def release_names(self) -> list[str]:
        rel = self.root / "releases"
        return sorted(p.name for p in rel.iterdir() if p.is_dir()) if rel.is_dir() else []

    def release_revisions(self, name: str) -> list[int]:
        folder = self.root / "releases" / check_ref_name(name)
        if not folder.is_dir():
            raise NotFound(f"no release named {name!r}")
        stems = [f[: -len(RELEASE_SUFFIX)] for f in os.listdir(folder)
                 if f.endswith(RELEASE_SUFFIX)]
        revs = [int(x) for x in stems if len(x) == 12 and x.isdigit()]
        return sorted(revs)

    def read_release(self, name: str, revision: int) -> bytes:
        try:
            return release_path(self.root, name, revision).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"release {name} revision {revision} does not exist") from None
