"""What a mirror folder is: its reserved names, how to tell it from a writable store,
and which release documents it may hold."""

from __future__ import annotations

import os
from pathlib import Path

from casstore.errors import CasError, IsAMirror, MirrorError
from casstore.format.objects import ObjectId
from casstore.releases.release import Release, unverified, verify

TMP_DIR = ".casmirror-tmp"
CATALOG_MARKER = ".cvmfscatalog"


def is_mirror_folder(path: Path) -> bool:
    """A store folder with no ``lock`` file: a plain mirror (writable stores always have one)."""
    path = Path(path)
    return (path / "objects").is_dir() and not (path / "lock").exists()


def is_writable_store(path: Path) -> bool:
    path = Path(path)
    return os.path.lexists(path / "lock") or os.path.lexists(path / "index")


def check_document(doc: bytes, name: str, revision: int, trusted: list[str]) -> Release:
    """A release document the mirror may publish: it parses, names its own path, and
    (with trusted keys) its signature verifies.  Expiry is a node's decision, not the
    mirror's: an old revision stays a valid historical document."""
    rel = verify(doc, trusted, now=0) if trusted else unverified(doc)
    if rel.name != name or rel.revision != revision:
        raise MirrorError(f"release document {name}@{revision} names {rel.name}@{rel.revision}")
    return rel


def refuse_mirror(path: Path, what: str) -> None:
    """Stop a writer's command (fsck, gc) that was pointed at a plain mirror folder."""
    if is_mirror_folder(path):
        raise IsAMirror(f"{path} is a plain mirror (no lock, no index), not a writable "
                        f"store: {what} does not apply; check it with "
                        f"'cas mirror --check {path}'")


def describe(oid: ObjectId, exc: CasError) -> str:
    """A problem line that names the object once."""
    text = str(exc)
    return text if str(oid) in text else f"object {oid}: {text}"
