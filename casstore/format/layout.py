"""Where things live inside a store folder (docs/FORMAT.md §2), and how big they may be.

The same relative paths are used on disk and as URL paths under an HTTP remote,
so a store folder served as static files is a valid remote (FORMAT §10.2).  The
size limits (FORMAT §10.1) are checked before a single byte is read, because
every one of these files may come from a hostile mirror.
"""

from __future__ import annotations

from pathlib import Path

from casstore.format.names import check_ref_name
from casstore.format.objects import MAX_RAW_SIZE, ObjectId

RELEASE_SUFFIX = ".release"
FORMAT_FILE = "casstore.json"
RELEASE_INDEX = "_index.json"  # '_' cannot start a release name, so it never collides

# Reader limits (FORMAT §10.1).
MAX_STORED_SIZE = MAX_RAW_SIZE + (2 << 20)  # header + zstd's worst-case growth, rounded up
MAX_RELEASE_DOC = 1 << 20
MAX_RELEASE_INDEX = 1 << 20
MAX_FORMAT_DOC = 64 << 10
MAX_REF = 1 << 10


def object_relpath(oid: ObjectId) -> str:
    h = oid.hex
    return f"objects/{h[:2]}/{h[2:]}"


def release_relpath(name: str, revision: int) -> str:
    return f"releases/{check_ref_name(name)}/{revision:012d}{RELEASE_SUFFIX}"


def names_index_relpath() -> str:
    """The release index listing every release name (FORMAT §6.4)."""
    return f"releases/{RELEASE_INDEX}"


def revisions_index_relpath(name: str) -> str:
    """The release index listing the revisions of ``name`` (FORMAT §6.4)."""
    return f"releases/{check_ref_name(name)}/{RELEASE_INDEX}"


def ref_relpath(name: str) -> str:
    return f"refs/{check_ref_name(name)}"


def object_path(root: Path, oid: ObjectId) -> Path:
    return Path(root) / object_relpath(oid)


def release_path(root: Path, name: str, revision: int) -> Path:
    return Path(root) / release_relpath(name, revision)

# Ids per "which objects do you lack" request (POST objects/missing; HTTP.md).
MAX_BATCH = 1000
