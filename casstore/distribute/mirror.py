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
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import (
    CasError,
    IsAMirror,
    MirrorBusy,
    MirrorError,
    MirrorIncomplete,
    NotFound,
)
from casstore.fileio.fsutil import atomic_write, fsync_dir
from casstore.fileio.fsutil import os_error as fs_error
from casstore.fileio.safeio import read_regular
from casstore.format import release_index
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_FORMAT_DOC,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    names_index_relpath,
    object_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, decode, peek_type
from casstore.releases.release import Release, unverified, verify
from casstore.sources.base import ObjectSource
from casstore.sources.local import LocalSource, check_format_doc
from casstore.store.maintenance import children

TMP_DIR = ".casmirror-tmp"
CATALOG_MARKER = ".cvmfscatalog"
# Test-only: seconds to sleep after each object copy (capped at 1 s), so a test can
# SIGKILL a real ``cas mirror`` mid-copy with a small store.  Never set it otherwise.
DELAY_ENV = "CAS_MIRROR_TEST_DELAY"
DEFAULT_JOBS = 8

Tick = Callable[[int], None]
OnWrite = Callable[[str], None]


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


def is_mirror_folder(path: Path) -> bool:
    """A store folder with no ``lock`` file: a plain mirror (writable stores always have one)."""
    path = Path(path)
    return (path / "objects").is_dir() and not (path / "lock").exists()


def is_writable_store(path: Path) -> bool:
    path = Path(path)
    return (path / "lock").exists() or (path / "index").exists()


@dataclass
class _Release:
    name: str
    revision: int
    doc: bytes
    tops: list[ObjectId]  # root and variant trees
    present: bool = False  # the destination already has this very document (repair)


class _Dest:
    """The destination folder: presence checks and atomic writes, nothing else."""

    def __init__(self, root: Path, markers: bool, on_write: OnWrite | None) -> None:
        self.root = root
        self.tmp = root / TMP_DIR
        self.markers = markers
        self.on_write = on_write
        try:
            self.delay = min(max(float(os.environ.get(DELAY_ENV) or 0), 0.0), 1.0)
        except ValueError:
            self.delay = 0.0

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has_object(self, oid: ObjectId, expect: ObjType | None = None) -> bool:
        """The object file is there (a regular file, and of the type a tree or blob
        reference needs: a chunk with a tree's bytes does not stand for a tree)."""
        p = self.path(object_relpath(oid))
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size < HEADER_SIZE:
            return False
        if expect is None or expect == ObjType.CHUNK:
            return True
        try:
            head = read_regular(p, MAX_STORED_SIZE, f"object {oid}", corrupt=CasError,
                                max_bytes=HEADER_SIZE)
            return head is not None and peek_type(oid, head) == expect
        except CasError:
            return False

    def verified_copy(self, oid: ObjectId, expect: ObjType | None) -> bytes | None:
        """The destination's copy decoded and checked against its id (for --repair),
        or None if it is missing or damaged (and must be copied again)."""
        try:
            data = read_regular(self.path(object_relpath(oid)), MAX_STORED_SIZE,
                                f"object {oid}", corrupt=CasError)
            return None if data is None else decode(oid, data, expect)[1]
        except CasError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, data, self.tmp)
        if self.on_write is not None:
            self.on_write(rel)

    def write_object(self, oid: ObjectId, stored: bytes) -> None:
        self._marker(oid)
        self.write(object_relpath(oid), stored)
        self._slow_down()

    def stage(self, oid: ObjectId, stored: bytes) -> int:
        """Keep a verified tree or blob in the temporary folder until its children are
        in place (memory stays flat however many new trees a release has)."""
        fd = os.open(self.tmp / oid.hex, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o644)
        try:
            os.fchmod(fd, 0o644)  # mirrors serve everyone, whatever the umask
            view = memoryview(stored)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise fs_error(exc, self.tmp / oid.hex) from None
        finally:
            os.close(fd)
        return len(stored)

    def commit(self, oid: ObjectId) -> None:
        """Move a staged object to its final name: fsync, rename, fsync the folder."""
        rel = object_relpath(oid)
        final, staged = self.path(rel), self.tmp / oid.hex
        self._marker(oid)
        try:
            fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged, final)
            fsync_dir(final.parent)
        except OSError as exc:
            raise fs_error(exc, final) from None
        if self.on_write is not None:
            self.on_write(rel)
        self._slow_down()

    def _marker(self, oid: ObjectId) -> None:
        folder = self.path(object_relpath(oid)).parent
        if self.markers and not (folder / CATALOG_MARKER).exists():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / CATALOG_MARKER, b"", self.tmp)

    def _slow_down(self) -> None:
        if self.delay:
            time.sleep(self.delay)

    def read_small(self, rel: str, limit: int) -> bytes | None:
        try:
            return read_regular(self.path(rel), limit, rel, corrupt=CasError)
        except CasError:
            return None  # damaged or odd: rewrite it

    def write_if_changed(self, rel: str, data: bytes, limit: int) -> bool:
        if self.read_small(rel, limit) == data:
            return False
        self.write(rel, data)
        return True


def check_document(doc: bytes, name: str, revision: int, trusted: list[str]) -> Release:
    """A release document the mirror may publish: it parses, names its own path, and
    (with trusted keys) its signature verifies.  Expiry is a node's decision, not the
    mirror's: an old revision stays a valid historical document."""
    rel = verify(doc, trusted, now=0) if trusted else unverified(doc)
    if rel.name != name or rel.revision != revision:
        raise MirrorError(f"release document {name}@{revision} names {rel.name}@{rel.revision}")
    return rel


class Mirror:
    """One run of ``cas mirror``: plan the releases, copy objects, then publish them."""

    def __init__(self, source: ObjectSource, dest: Path, *, names: Iterable[str] | None = None,
                 trusted: list[str] | None = None, jobs: int = DEFAULT_JOBS,
                 markers: bool = True, repair: bool = False, tick: Tick | None = None,
                 on_write: OnWrite | None = None) -> None:
        self.source = source
        self.dest = _Dest(Path(dest), markers, on_write)
        self.names = list(names) if names else None
        self.trusted = trusted or []
        self.jobs = max(1, jobs)
        # --repair: trust nothing already in the destination; verify every object a
        # release needs, walk every tree, and copy again whatever is missing or damaged.
        self.repair = repair
        self.tick = tick or (lambda n: None)
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
        shutil.rmtree(self.dest.tmp, ignore_errors=True)  # a killed run's leftovers
        self.dest.tmp.mkdir()
        try:
            (self.dest.root / "objects").mkdir(exist_ok=True)
            (self.dest.root / "releases").mkdir(exist_ok=True)
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
            shutil.rmtree(self.dest.tmp, ignore_errors=True)
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
        """Breadth-first over the new trees and blobs (fetched in parallel per level).

        A tree or blob already in the destination stands for its whole subtree
        (children are always written before parents), so the walk stops there.
        Bookkeeping happens here, in one thread; the workers only fetch and verify.
        """
        seen: set[tuple[bytes, bool]] = set()  # a chunk and a tree may share an id
        level: list[tuple[ObjectId, ObjType]] = []

        def want(oid: ObjectId, kind: ObjType) -> None:
            key = (oid.digest, kind != ObjType.CHUNK)
            if key in seen:
                return
            seen.add(key)
            if kind != ObjType.CHUNK:
                level.append((oid, kind))
            elif not self.repair and self.dest.has_object(oid):
                self._present(oid)
            else:
                self.chunks[oid.digest] = oid

        for oid in tops:
            want(oid, ObjType.TREE)
        with ThreadPoolExecutor(self.jobs) as pool:
            while level:
                batch, level = level, []
                for (oid, _kind), got in zip(batch, pool.map(self._fetch_node, batch),
                                             strict=True):
                    if got is None:
                        self._present(oid)
                    elif isinstance(got, CasError):
                        self.failed.add(oid.digest)
                        self.rep.problems.append(_describe(oid, got))
                    else:
                        stored, kids = got
                        if stored is None:  # --repair: the destination's copy verified
                            self._present(oid)
                        else:
                            size = self.dest.stage(oid, stored)
                            self.pending[oid.digest] = (oid, size, [c.digest for c, _k in kids])
                        for child, ckind in kids:
                            want(child, ckind)
        self.order = self._post_order()

    def _present(self, oid: ObjectId) -> None:
        if oid.digest not in self.done:
            self.done.add(oid.digest)
            self.rep.objects_skipped += 1

    def _fetch_node(self, item: tuple[ObjectId, ObjType]
                    ) -> None | CasError | tuple[bytes | None, list[tuple[ObjectId, ObjType]]]:
        """None if the destination has it (its subtree too); else the verified stored
        bytes from the source and the children (bytes None: --repair verified the
        destination's copy, whose children must still be checked)."""
        oid, kind = item
        if self.repair:
            raw = self.dest.verified_copy(oid, kind)
            if raw is not None:
                try:
                    return None, [(c, k) for c, k, _need in children(kind, raw)]
                except CasError:
                    pass  # damaged structure: copy it again from the source
        elif self.dest.has_object(oid, kind):
            return None
        try:
            stored = self.source.read_stored(oid)
            got_kind, raw = decode(oid, stored, kind)  # verify before anything is used
            return stored, [(c, k) for c, k, _need in children(got_kind, raw)]
        except CasError as exc:
            return exc

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
                    self.rep.problems.append(_describe(oid, result))
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


def _describe(oid: ObjectId, exc: CasError) -> str:
    text = str(exc)
    return text if str(oid) in text else f"object {oid}: {text}"


def mirror(source: ObjectSource, dest: Path, **kw) -> MirrorReport:
    """Mirror ``source`` into ``dest`` (see :class:`Mirror`); raises MirrorIncomplete
    (carrying the report) if anything failed, after copying everything else."""
    return Mirror(source, dest, **kw).run()


# -- checking a mirror (fsck is for writable stores) ---------------------------------
@dataclass
class CheckReport:
    checked: int = 0
    releases: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported, but not damage


def check_mirror(dest: Path, tick: Tick | None = None) -> CheckReport:
    """Verify a mirror as a reader sees it: every listed release document parses and
    names its path, and every object it needs is there and hashes to its id.

    Only what the release index lists is checked (that is all a reader can reach);
    ``.cvmfscatalog`` markers and the like are never looked at.
    """
    tick = tick or (lambda n: None)
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
                   tick: Tick) -> None:
    seen: set[tuple[bytes, bool]] = set()
    stack = [(oid, ObjType.TREE, via) for via, oid in tops]
    while stack:
        oid, kind, via = stack.pop()
        key = (oid.digest, kind != ObjType.CHUNK)
        if key in seen:
            continue
        seen.add(key)
        try:
            stored = src.read_stored(oid)
            got, raw = decode(oid, stored, None if kind == ObjType.CHUNK else kind)
        except CasError as exc:
            rep.problems.append(f"{_describe(oid, exc)} (needed by {via})")
            continue
        rep.checked += 1
        tick(len(stored))
        if kind != ObjType.CHUNK:
            try:
                stack.extend((c, k, via) for c, k, _n in children(got, raw))
            except CasError as exc:
                rep.problems.append(f"{_describe(oid, exc)} (needed by {via})")


def refuse_mirror(path: Path, what: str) -> None:
    """Stop a writer's command (fsck, gc) that was pointed at a plain mirror folder."""
    if is_mirror_folder(path):
        raise IsAMirror(f"{path} is a plain mirror (no lock, no index), not a writable "
                        f"store: {what} does not apply; check it with "
                        f"'cas mirror --check {path}'")
