"""``cas mirror --check``: verify a mirror as a reader sees it (fsck is for writable
stores)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from casstore.distribute.mirror.folder import TMP_DIR, check_document, describe
from casstore.errors import CasError
from casstore.format.layout import names_index_relpath, revisions_index_relpath
from casstore.format.objects import ObjectId, ObjType, decode
from casstore.sources.local import LocalSource
from casstore.store.progress import Progress, no_progress
from casstore.store.reachable import Node, walk
from casstore.store.reachable import roots as root_nodes


@dataclass
class CheckReport:
    checked: int = 0
    releases: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported, but not damage


def check_mirror(dest: Path, tick: Progress | None = None) -> CheckReport:
    """Verify a mirror as a reader sees it: every listed release document parses and
    names its path, and every object it needs is there and hashes to its id.

    Only what the release index lists is checked (that is all a reader can reach);
    ``.cvmfscatalog`` markers and the like are never looked at.
    """
    tick = tick or no_progress
    rep = CheckReport()
    dest = Path(dest)
    if (dest / TMP_DIR).exists():
        rep.notes.append(f"{TMP_DIR}/ exists: a cas mirror is running, or was killed "
                         "(the next run removes it)")
    src = LocalSource(dest)
    tops: list[tuple[str, ObjectId]] = []
    try:
        names = src.release_names()
    except CasError as exc:
        rep.problems.append(f"{names_index_relpath()}: {exc}")
        names = []
    for name in names:
        try:
            revs = src.release_revisions(name)
        except CasError as exc:
            rep.problems.append(f"{revisions_index_relpath(name)}: {exc}")
            continue
        for rev in revs:
            try:
                rel = check_document(src.read_release(name, rev), name, rev, [])
                ids = list(rel.trees().values())
            except CasError as exc:
                rep.problems.append(f"release {name}@{rev}: {exc}")
                continue
            rep.releases += 1
            tops += [(f"{name}@{rev}", t) for t in ids]
    _check_objects(src, tops, rep, tick)
    return rep


def _check_objects(src: LocalSource, tops: list[tuple[str, ObjectId]], rep: CheckReport,
                   tick: Progress) -> None:
    """Every object reachable from ``tops`` is there and hashes to its id."""
    def visit(node: Node) -> tuple[int, Sequence[Node]]:
        oid = node.oid
        try:
            stored = src.read_stored(oid)
            got, raw = decode(oid, stored, None if node.kind == ObjType.CHUNK else node.kind)
        except CasError as exc:
            rep.problems.append(f"{describe(oid, exc)} (needed by {node.via})")
            return -1, ()
        if node.kind == ObjType.CHUNK:
            return len(stored), ()
        try:
            return len(stored), node.expand(raw, got)
        except CasError as exc:
            rep.problems.append(f"{describe(oid, exc)} (needed by {node.via})")
            return len(stored), ()

    for v in walk(root_nodes(tops), visit):
        if v.result >= 0:
            rep.checked += 1
            tick(v.result)
