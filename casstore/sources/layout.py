"""Where things live inside a store folder (docs/FORMAT.md §2).

The same relative paths are used on disk and, later, as URL paths under an HTTP
remote, so a store folder served as static files is a valid remote.
"""

from __future__ import annotations

from pathlib import Path

from casstore.names import check_ref_name
from casstore.objects import ObjectId

RELEASE_SUFFIX = ".release"
FORMAT_FILE = "casstore.json"


def object_relpath(oid: ObjectId) -> str:
    h = oid.hex
    return f"objects/{h[:2]}/{h[2:]}"


def release_relpath(name: str, revision: int) -> str:
    return f"releases/{check_ref_name(name)}/{revision:012d}{RELEASE_SUFFIX}"


def object_path(root: Path, oid: ObjectId) -> Path:
    return Path(root) / object_relpath(oid)


def release_path(root: Path, name: str, revision: int) -> Path:
    return Path(root) / release_relpath(name, revision)
