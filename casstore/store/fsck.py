"""``cas fsck``: verify every object file, reachability, types and sizes, and the index.

It does not stop at the first problem: a damaged store is exactly when an operator
needs the whole list, so every check appends a line naming its object or path and
carries on; the command exits non-zero once, at the end.  ``--rebuild-index``
recreates the index (a cache) from the verified object files and the refs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from casstore.errors import CasError, IndexDamaged
from casstore.format.layout import object_path
from casstore.format.objects import HEADER, ObjectId, ObjType, decode, is_object_id
from casstore.format.trees import decode_blob, decode_tree
from casstore.store.index import IndexEntry
from casstore.store.mark import Known, mark
from casstore.store.progress import Progress, no_progress
from casstore.store.roots import listdir, ref_roots
from casstore.store.writable import Store, read_object_file


@dataclass
class FsckReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported, but not damage
    index_rebuilt: bool = False


def fsck(store: Store, tick: Progress | None = None, rebuild_index: bool = False) -> FsckReport:
    """Verify every object file, reachability, types and sizes, and the index.

    A rebuild takes the exclusive lock, so no put records entries into the index
    being replaced; a plain check shares the lock with puts (gc cannot sweep under it).
    """
    with store.lock(exclusive=rebuild_index):
        return _fsck(store, tick or no_progress, rebuild_index)


def _fsck(store: Store, tick: Progress, rebuild_index: bool) -> FsckReport:
    rep = FsckReport()
    known, present = scan_objects(store, rep, tick)
    m = mark(store, known)
    rep.problems += m.problems
    if rebuild_index:
        _rebuild_index(store, known)
        rep.index_rebuilt = True
    else:
        problems, rep.notes = compare_index(store, known, present)
        rep.problems += problems
    return rep


def scan_objects(store: Store, rep: FsckReport,
                 tick: Progress) -> tuple[dict[bytes, Known], set[bytes]]:
    """Decode every file under objects/; returns the good ones and every well-named one."""
    known: dict[bytes, Known] = {}
    present: set[bytes] = set()
    objdir = store.root / "objects"
    for sub in listdir(objdir, rep.problems, "objects/"):
        folder = objdir / sub
        if len(sub) != 2 or not folder.is_dir() or folder.is_symlink():
            rep.problems.append(f"objects/{sub}: stray file (not an object folder)")
            continue
        for name in listdir(folder, rep.problems, f"objects/{sub}/"):
            text = "b3-" + sub + name
            if not is_object_id(text) or text != text.lower():
                rep.problems.append(f"objects/{sub}/{name}: stray file (not an object name)")
                continue
            oid = ObjectId.parse(text)
            present.add(oid.digest)
            rep.checked += 1
            try:
                known[oid.digest] = check_object(store, oid)
            except CasError as exc:
                msg = str(exc)
                rep.problems.append("corrupt: " + (msg if str(oid) in msg
                                                   else f"object {oid}: {msg}"))
            tick(1)
    return known, present


def check_object(store: Store, oid: ObjectId) -> Known:
    """Fully verify one object file: header, hash, and a tree's or blob's structure."""
    stored, st = read_object_file(object_path(store.root, oid))
    kind, raw = decode(oid, stored)
    if HEADER.unpack_from(stored)[3] != 0:
        raise CasError(f"object {oid} has a non-zero reserved header field")
    size = len(raw)
    if kind == ObjType.TREE:
        decode_tree(raw)
    elif kind == ObjType.BLOB:
        size = decode_blob(raw)[0]
    return Known(kind, len(raw), size, len(stored), st.st_ctime_ns)


def compare_index(store: Store, known: dict[bytes, Known],
                  present: set[bytes]) -> tuple[list[str], list[str]]:
    """Drift between the index (a cache) and the object files (the truth).

    Returns (problems, notes).  Entries the index lacks are a note: a put that was
    killed or failed leaves them, and they only cost a re-check on the next reuse
    (and an under-count in ``cas stat``).  Entries that claim an absent object or the
    wrong type or size are problems: a has/size lookup would answer wrongly.
    """
    try:
        indexed = {oid.digest: e for oid, e in store.index.items()}
    except IndexDamaged as exc:
        return [f"index: {exc}"], []
    missing = [d for d in present if d not in indexed]
    if missing:  # a put running now may record them a moment later: look again
        missing = [d for d in missing if store.index.get(ObjectId(d)) is None]
    stale = [d for d in indexed if d not in present
             and not os.path.lexists(object_path(store.root, ObjectId(d)))]
    wrong = [d for d, k in known.items() if d in indexed
             and (indexed[d].kind != k.kind or indexed[d].raw_size != k.raw_size)]

    def line(ds: list[bytes], what: str) -> list[str]:
        return [f"index: {len(ds)} {what}, e.g. {ObjectId(sorted(ds)[0])}; run "
                "'cas fsck --rebuild-index'"] if ds else []

    problems = (line(stale, "entry(ies) for absent objects")
                + line(wrong, "entry(ies) with the wrong type or size"))
    return problems, line(missing, "object(s) missing from the index (a put was killed "
                                   "or failed)")


def _rebuild_index(store: Store, known: dict[bytes, Known]) -> None:
    """Recreate the index from the verified objects (marked verified) and the refs."""
    index = store.reset_index()
    index.add((ObjectId(d), IndexEntry(k.kind, k.raw_size, k.stored_size, k.ctime_ns))
              for d, k in known.items())
    for label, oid in ref_roots(store, []):
        index.set_ref(label.removeprefix("ref "), oid)
