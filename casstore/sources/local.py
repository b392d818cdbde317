"""A store folder read as plain files: a local disk, NFS, or a read-only CVMFS mirror."""

from __future__ import annotations

import json
import os
from pathlib import Path

from casstore.errors import NotFound, ObjectMissing, StoreError
from casstore.names import check_ref_name
from casstore.objects import ObjectId, ObjType
from casstore.sources.base import verified
from casstore.sources.layout import FORMAT_FILE, RELEASE_SUFFIX, object_path, release_path


def check_store_format(root: Path) -> None:
    """Refuse a store written in a format version this reader does not know."""
    try:
        doc = json.loads((root / FORMAT_FILE).read_text())
    except FileNotFoundError:
        return  # a bare mirror of objects/ and releases/ is still readable
    except (OSError, ValueError):
        raise StoreError(f"{root}/{FORMAT_FILE} is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != "casstore":
        raise StoreError(f"{root} is not a casstore store (bad {FORMAT_FILE})")
    if doc.get("version") != 1:
        raise StoreError(f"{root}: unsupported store format version {doc.get('version')}")


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

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        return verified(oid, self.read_stored(oid), expect)

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
