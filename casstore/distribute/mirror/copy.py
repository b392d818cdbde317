"""``cas mirror``: an incremental, verified export of a store into a plain folder.

The destination holds only what a reader needs (docs/FORMAT.md §2): ``objects/``,
``releases/`` (documents and the release index, §6.4) and ``casstore.json``; no
``index/``, no ``lock``, no ``tmp/``.  So it can be published into CVMFS
(``cvmfs_server transaction``, ``cas mirror``, ``cvmfs_server publish``), served by
any static web server, or mounted straight from a read-only folder.

The source is any :class:`~casstore.sources.base.ObjectSource` (a store folder, an
HTTP remote): only the interface is used.  Why the order matters:

* **Every object is verified** against its id before it is written, so a corrupt
  source object is never copied (a mirror must not spread damage).
* **Children before parents.**  Chunks are copied first (in parallel), then trees
  and blob manifests in post-order, a tree only once all its children are in the
  destination; then release documents; then ``releases/<name>/_index.json``; then
  ``releases/_index.json`` (FORMAT §6.4).  Two things follow: a reader of the
  destination never sees a release whose objects are not all there, and the next
  run may take a tree already in the destination to stand for its whole subtree
  (it does not walk it again), which makes an incremental run cost what is new.
  ``repair=True`` (``--repair``) drops that assumption and verifies everything.
* **Every file is written atomically**: a temporary file in ``.casmirror-tmp/``
  inside the destination, fsync, rename, fsync of the folder (new trees wait there,
  verified, until their children are in place).  A killed run leaves
  only that folder (readers never list folders, so they never see it); the next run
  removes it first and completes the work.  Nothing partial ever has a final name.

The mirror is not a trust boundary (nodes verify every signature and hash): it
copies every release the source publishes, but refuses a release document that does
not parse or whose signed name and revision disagree with its path, and with
``trusted`` keys also one whose signature does not verify.  It never deletes.

For CVMFS it writes an empty ``.cvmfscatalog`` in each ``objects/xx/`` folder, so
each gets its own nested catalog (CVMFS advises nested catalogs for big
repositories; a ``.cvmfsdirtab`` would only work at the repository's root, and the
mirror is usually a sub-folder of it).  Readers never list ``objects/xx/`` and
``check_mirror`` ignores the markers.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from casstore.distribute.mirror.folder import TMP_DIR, check_document, describe, is_writable_store
from casstore.distribute.mirror.writer import MirrorWriter, OnWrite
from casstore.errors import CasError, IsAMirror, MirrorBusy, MirrorError, MirrorIncomplete, NotFound
from casstore.format import release_index
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_FORMAT_DOC,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    names_index_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.objects import ObjectId, ObjType, decode
from casstore.sources.base import ObjectSource
from casstore.sources.local import LocalSource, check_format_doc
from casstore.store.progress import Progress, no_progress
from casstore.store.reachable import Node, walk
from casstore.store.reachable import roots as root_nodes

DEFAULT_JOBS = 8
_PRESENT = object()  # the destination has it (a tree: with its whole subtree)
_COPY = object()  # a chunk to copy


@dataclass
class MirrorReport:
    """What one run did; ``problems`` name every object or document that failed."""

    objects_copied: int = 0
    objects_skipped: int = 0  # already in the destination
    bytes_copied: int = 0
    releases_copied: int = 0
    releases_skipped: int = 0  # the same document was already there
    problems: list[str] = field(default_factory=list)
    releases_held_back: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"objects_copied": self.objects_copied, "objects_skipped": self.objects_skipped,
                "bytes_copied": self.bytes_copied, "releases_copied": self.releases_copied,
                "releases_skipped": self.releases_skipped, "problems": self.problems,
                "releases_held_back": self.releases_held_back, "ok": not self.problems}


@dataclass
class _Release:
    name: str
    revision: int
    doc: bytes
    tops: list[ObjectId]  # root and variant trees
    present: bool = False  # the destination already has this very document (repair)


class Mirror:
    """One run of ``cas mirror``: plan the releases, copy objects, then publish them."""

    def __init__(self, source: ObjectSource, dest: Path, *, names: Iterable[str] | None = None,
                 trusted: list[str] | None = None, jobs: int = DEFAULT_JOBS,
                 markers: bool = True, repair: bool = False, tick: Progress | None = None,
                 on_write: OnWrite | None = None) -> None:
        self.source = source
        self.dest = MirrorWriter(Path(dest), markers, on_write)
        self.names = list(names) if names else None
        self.trusted = trusted or []
        self.jobs = max(1, jobs)
        # --repair: trust nothing already in the destination; verify every object a
        # release needs, walk every tree, and copy again whatever is missing or damaged.
        self.repair = repair
        self.tick = tick or no_progress
        self.rep = MirrorReport()
        # The walk's results: stored bytes of new trees/blobs, their children, and the
        # order to write them (children first); chunk ids to copy; what is complete.
        self.pending: dict[bytes, tuple[ObjectId, int, list[bytes]]] = {}  # staged
        self.order: list[bytes] = []
        self.chunks: dict[bytes, ObjectId] = {}
        self.done: set[bytes] = set()
        self.failed: set[bytes] = set()

    # -- the run -------------------------------------------------------------------
    def run(self) -> MirrorReport:
        root = self.dest.root
        if is_writable_store(root):
            raise IsAMirror(f"{root} is a writable store (it has a lock or an index): "
                            "cas mirror writes plain mirror folders only")
        try:
            root.mkdir(parents=True, exist_ok=True)
            others = set(os.listdir(root)) - {TMP_DIR}
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise MirrorError(f"cannot use {root} as a mirror: {exc.strerror}") from None
        if others and "objects" not in others:  # a typo must not litter a random folder
            os.close(fd)
            raise MirrorError(f"{root} is neither empty nor a mirror (no objects/ folder); "
                              "give a new or empty folder, or an earlier mirror")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MirrorBusy(f"another cas mirror is writing {root}") from None
            return self._locked()
        finally:
            os.close(fd)  # also drops the flock

    def _locked(self) -> MirrorReport:
        self.dest.reset_tmp()  # a killed run's leftovers
        try:
            self.dest.folder("objects")
            self.dest.folder("releases")
            fmt = self.source.read_format()
            check_format_doc(fmt, "the source")
            if fmt is not None:
                self.dest.write_if_changed(FORMAT_FILE, fmt, MAX_FORMAT_DOC)
            plan = self._plan()
            self._walk([t for r in plan for t in r.tops])
            self._copy_chunks()
            self._write_trees()
            self._publish(plan)
        finally:
            self.dest.remove_tmp()
        if self.rep.problems:
            held = (f"; releases not written: {', '.join(self.rep.releases_held_back)}"
                    if self.rep.releases_held_back else "")
            exc = MirrorIncomplete(f"mirror incomplete: {len(self.rep.problems)} problem(s): "
                                   f"{self.rep.problems[0]}{held}")
            exc.report = self.rep  # type: ignore[attr-defined]
            raise exc
        return self.rep

    # -- 1. which release documents to copy ----------------------------------------
    def _plan(self) -> list[_Release]:
        plan = []
        names = self.names if self.names is not None else self.source.release_names()
        for name in names:
            try:
                revisions = self.source.release_revisions(name)
            except NotFound:
                self.rep.problems.append(f"the source has no release named {name!r}")
                continue
            for rev in revisions:
                got = self._document(name, rev)
                if got is not None:
                    plan.append(got)
        return plan

    def _document(self, name: str, rev: int) -> _Release | None:
        try:
            doc = self.source.read_release(name, rev)
        except NotFound:
            return None  # the source's index runs ahead of its documents (FORMAT §6.4)
        except CasError as exc:
            self._problem(f"release {name}@{rev}: {exc}", f"{name}@{rev}")
            return None
        present = self.dest.read_small(release_relpath(name, rev), MAX_RELEASE_DOC) == doc
        if present:
            self.rep.releases_skipped += 1  # written last, so its objects are all there
            if not self.repair:
                return None
        try:
            rel = check_document(doc, name, rev, self.trusted)
            return _Release(name, rev, doc, list(rel.trees().values()),
                            present)
        except CasError as exc:
            self._problem(f"release {name}@{rev} refused: {exc}", f"{name}@{rev}")
            return None

    def _problem(self, text: str, held: str | None = None) -> None:
        self.rep.problems.append(text)
        if held is not None and held not in self.rep.releases_held_back:
            self.rep.releases_held_back.append(held)

    # -- 2. walk the trees that are not in the destination yet ----------------------
    def _walk(self, tops: list[ObjectId]) -> None:
        """The reachable walk (:mod:`casstore.store.reachable`), stopping at what the
        destination has: a tree or blob already there stands for its whole subtree
        (children are always written before parents).  The visits fetch and verify in
        parallel; the bookkeeping happens here, in one thread.
        """
        starts = root_nodes(("root", t) for t in tops)
        for v in walk(starts, self._visit, jobs=self.jobs):
            oid, got = v.node.oid, v.result
            if got is _PRESENT:
                self._present(oid)
            elif got is _COPY:
                self.chunks[oid.digest] = oid
            elif isinstance(got, CasError):
                self.failed.add(oid.digest)
                self.rep.problems.append(describe(oid, got))
            elif isinstance(got, bytes):
                size = self.dest.stage(oid, got)
                self.pending[oid.digest] = (oid, size, [c.oid.digest for c in v.children])
        self.order = self._post_order()

    def _present(self, oid: ObjectId) -> None:
        if oid.digest not in self.done:
            self.done.add(oid.digest)
            self.rep.objects_skipped += 1

    def _visit(self, node: Node) -> tuple[object, Sequence[Node]]:
        """What to do with one object, and the children to walk next.

        A chunk is ``_PRESENT`` or ``_COPY`` (copied later, in parallel).  A tree or
        blob is ``_PRESENT`` with no children if the destination has it; ``_PRESENT``
        with its children if ``--repair`` verified the destination's copy; else the
        verified stored bytes from the source (to stage), or the CasError.
        """
        oid, kind = node.oid, node.kind
        if kind == ObjType.CHUNK:
            return (_COPY if self.repair or not self.dest.has_object(oid) else _PRESENT), ()
        if self.repair:
            raw = self.dest.verified_copy(oid, kind)
            if raw is not None:
                try:
                    return _PRESENT, node.expand(raw)
                except CasError:
                    pass  # damaged structure: copy it again from the source
        elif self.dest.has_object(oid, kind):
            return _PRESENT, ()
        try:
            stored = self.source.read_stored(oid)
            got_kind, raw = decode(oid, stored, kind)  # verify before anything is used
            return stored, node.expand(raw, got_kind)
        except CasError as exc:
            return exc, ()

    def _post_order(self) -> list[bytes]:
        """New trees and blobs, every one after all of its new children (no recursion)."""
        order: list[bytes] = []
        placed: set[bytes] = set()
        for start in self.pending:
            stack = [(start, False)]
            while stack:
                d, expanded = stack.pop()
                if d in placed:
                    continue
                if expanded:
                    placed.add(d)
                    order.append(d)
                    continue
                stack.append((d, True))
                stack.extend((c, False) for c in self.pending[d][2]
                             if c in self.pending and c not in placed)
        return order

    # -- 3. copy chunks, then write trees children-first ----------------------------
    def _copy_chunks(self) -> None:
        todo = [oid for d, oid in self.chunks.items() if d not in self.pending]
        with ThreadPoolExecutor(self.jobs) as pool:
            for oid, result in zip(todo, pool.map(self._copy_one, todo), strict=True):
                if result is None:
                    self._present(oid)
                elif isinstance(result, CasError):
                    self.failed.add(oid.digest)
                    self.rep.problems.append(describe(oid, result))
                else:
                    self.done.add(oid.digest)
                    self.rep.objects_copied += 1
                    self.rep.bytes_copied += result
                    self.tick(result)

    def _copy_one(self, oid: ObjectId) -> int | CasError | None:
        """Bytes copied, or None if --repair found a good copy already there."""
        if self.repair and self.dest.verified_copy(oid, None) is not None:
            return None
        try:
            stored = self.source.read_stored(oid)
            decode(oid, stored)  # a chunk reference accepts any type; the hash must match
            self.dest.write_object(oid, stored)
            return len(stored)
        except CasError as exc:
            return exc

    def _write_trees(self) -> None:
        for d in self.order:
            oid, size, kids = self.pending[d]
            if d in self.failed:
                continue
            missing = [k for k in kids if k not in self.done]
            if missing:
                self.failed.add(d)
                continue
            self.dest.commit(oid)
            self.done.add(d)
            self.rep.objects_copied += 1
            self.rep.bytes_copied += size
            self.tick(size)

    # -- 4. documents, then the release index -----------------------------------------
    def _publish(self, plan: list[_Release]) -> None:
        touched: set[str] = set()
        for r in plan:
            if all(t.digest in self.done for t in r.tops):
                if r.present:
                    continue
                self.dest.write(release_relpath(r.name, r.revision), r.doc)
                self.rep.releases_copied += 1
                touched.add(r.name)
            elif r.present:
                self._problem(f"release {r.name}@{r.revision} (already in the mirror): some "
                              "of its objects are missing or damaged and could not be "
                              "copied again", f"{r.name}@{r.revision}")
            else:
                self._problem(f"release {r.name}@{r.revision} not written: some of its "
                              "objects could not be copied", f"{r.name}@{r.revision}")
        local = LocalSource(self.dest.root)
        names = local.scan_release_names()
        for name in sorted(set(names) | touched):
            revs = local.scan_revisions(name)
            self.dest.write_if_changed(revisions_index_relpath(name),
                                       release_index.encode_revisions(name, revs),
                                       MAX_RELEASE_INDEX)
        self.dest.write_if_changed(names_index_relpath(), release_index.encode_names(names),
                                   MAX_RELEASE_INDEX)


def mirror(source: ObjectSource, dest: Path, **kw) -> MirrorReport:
    """Mirror ``source`` into ``dest`` (see :class:`Mirror`); raises MirrorIncomplete
    (carrying the report) if anything failed, after copying everything else."""
    return Mirror(source, dest, **kw).run()
