"""``cas fsck`` and ``cas gc``: verify everything, rebuild the index, mark and sweep.

Both walk the same reachability graph (refs and every release revision, root
and variant trees, down to chunks).  gc keeps unreferenced objects younger than a
grace period, so a ``put`` whose tree is not referenced yet loses nothing, and it
sweeps under the store's exclusive lock while puts hold it shared.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import CasError, ObjectMissing, StoreError
from casstore.fsutil import TMP_PREFIX
from casstore.index import IndexEntry
from casstore.objects import ObjectId, ObjType, decode
from casstore.releases import unverified
from casstore.remote import object_path
from casstore.store import Store
from casstore.trees import Kind, Storage, decode_blob, decode_tree

Tick = Callable[[int], None]


def roots(store: Store) -> Iterator[tuple[str, ObjectId]]:
    """Every (label, id) that keeps objects alive: refs and all release revisions."""
    for name, oid in store.refs().items():
        yield f"ref {name}", oid
    for name in store.release_names():
        for rev in store.release_revisions(name):
            try:
                rel = unverified(store.read_release(name, rev))
            except CasError:
                yield f"release {name}@{rev} (unreadable)", None  # type: ignore[misc]
                continue
            yield f"release {name}@{rev}", rel.root_id
            for lvl, oid in rel.variant_ids().items():
                yield f"release {name}@{rev} variant {lvl}", oid


def children(kind: ObjType, raw: bytes) -> Iterator[tuple[ObjectId, ObjType]]:
    """The objects one decoded object refers to."""
    if kind == ObjType.TREE:
        for e in decode_tree(raw):
            if e.kind == Kind.DIR:
                yield e.oid, ObjType.TREE  # type: ignore[misc]
            elif e.kind == Kind.FILE and e.storage in (Storage.CHUNK, Storage.PACKED):
                yield e.oid, ObjType.CHUNK  # type: ignore[misc]
            elif e.kind == Kind.FILE and e.storage == Storage.BLOB:
                yield e.oid, ObjType.BLOB  # type: ignore[misc]
    elif kind == ObjType.BLOB:
        for c in decode_blob(raw)[1]:
            yield c.oid, ObjType.CHUNK


@dataclass
class Marked:
    live: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def mark(store: Store, verify_chunks: bool = False) -> Marked:
    """Walk from every root; chunks are only checked for presence unless asked."""
    m = Marked()
    for label, top in roots(store):
        if top is None:
            m.problems.append(f"{label}: release document cannot be read")
            continue
        stack = [(top, None, label)]
        while stack:
            oid, expect, via = stack.pop()
            if oid.digest in m.live:
                continue
            m.live.add(oid.digest)
            _visit(store, oid, expect, via, stack, m, verify_chunks)
    return m


def _visit(store: Store, oid: ObjectId, expect: ObjType | None, via: str, stack: list,
           m: Marked, verify_chunks: bool) -> None:
    if expect == ObjType.CHUNK and not verify_chunks:
        if not object_path(store.root, oid).exists():
            m.problems.append(f"missing object {oid} (needed by {via})")
        return
    try:
        kind, raw = decode(oid, store.read_stored(oid), expect)
    except ObjectMissing:
        m.problems.append(f"missing object {oid} (needed by {via})")
        return
    except CasError as exc:
        m.problems.append(f"{exc} (needed by {via})")
        return
    for child, ckind in children(kind, raw):
        stack.append((child, ckind, via))


@dataclass
class FsckReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)


def fsck(store: Store, tick: Tick | None = None, rebuild_index: bool = False) -> FsckReport:
    """Verify every object file, then reachability; optionally rebuild the index."""
    with store.lock():  # shared: a concurrent gc cannot sweep under the check
        return _fsck(store, tick or (lambda n: None), rebuild_index)


def _fsck(store: Store, tick: Tick, rebuild_index: bool) -> FsckReport:
    rep = FsckReport()
    batch: list[tuple[ObjectId, IndexEntry]] = []
    if rebuild_index:
        store.index.clear()
    for oid in store.iter_object_ids():
        rep.checked += 1
        try:
            stored = store.read_stored(oid)
            kind, raw = decode(oid, stored)
            batch.append((oid, IndexEntry(kind, len(raw), len(stored))))
        except CasError as exc:
            rep.problems.append(f"corrupt: {exc}")
        tick(1)
    rep.problems += mark(store).problems
    if rebuild_index:
        store.index.add(batch)
        for name, oid in store.refs().items():
            store.index.set_ref(name, oid)
    return rep


@dataclass
class GcReport:
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0
    live: int = 0
    tmp_removed: int = 0
    problems: list[str] = field(default_factory=list)


def gc(store: Store, grace_seconds: float, dry_run: bool = False,
       force: bool = False) -> GcReport:
    """Mark from roots and sweep what is unreachable and older than the grace period.

    If marking met a missing, corrupt or unreadable object, whatever hangs below it
    was not marked, so sweeping would delete live data: refuse unless forced.
    """
    rep = GcReport()
    cutoff = time.time() - grace_seconds
    with store.lock(exclusive=True):
        m = mark(store)
        rep.problems = m.problems
        rep.live = len(m.live)
        if m.problems and not force:
            raise StoreError(f"gc found {len(m.problems)} problem(s) while marking, e.g. "
                             f"{m.problems[0]}; nothing deleted (run 'cas fsck', or "
                             "'cas gc --force' to sweep anyway)")
        doomed = []
        for oid in store.iter_object_ids():
            if oid.digest in m.live:
                continue
            st = os.stat(object_path(store.root, oid))
            if st.st_mtime > cutoff:
                rep.kept_young += 1
                continue
            doomed.append(oid)
            rep.deleted += 1
            rep.deleted_bytes += st.st_size
        rep.tmp_removed = _sweep_tmp(store.tmp, cutoff, dry_run)
        if not dry_run:
            for oid in doomed:
                store.delete_object(oid)
            store.index.remove(doomed)
    return rep


def _sweep_tmp(tmpdir: Path, cutoff: float, dry_run: bool) -> int:
    """Remove temporary files left by interrupted writes."""
    n = 0
    for name in os.listdir(tmpdir):
        p = tmpdir / name
        if name.startswith(TMP_PREFIX) and p.stat().st_mtime <= cutoff:
            n += 1
            if not dry_run:
                p.unlink(missing_ok=True)
    return n

