"""Prefetch lists: what a real start of a release's workload reads, fetched ahead.

A cold node over a 25 ms link pays one round trip per object it reads on demand;
a Julia start reads a few hundred.  So ``cas depot build`` records, per variant,
which paths a real start reads from the mounted release (in first-access order)
and which objects are behind them, and stores that list *in* the release
(docs/FORMAT.md §6.5): ``meta.prefetch[level]`` names a one-entry tree holding
``prefetch.json``, so the signature covers it through its id and every walker of
release trees (gc, fsck, push, mirror) keeps it.  On mount the client fetches the
listed objects in bounded parallel batches into its cache while the first reads
are served (:class:`Replay`).

This module is the model: the list format (:class:`PrefetchList`), the access
recorder the FUSE client feeds (:class:`AccessRecorder`), turning accesses into a
list over a VFS (:func:`build_list`), storing and loading the list
(:func:`store_list`, :func:`load_list`) and the replay.  Replay is advisory: a
missing, corrupt or malformed list or object is logged and counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import CasError, FormatError, NotFound
from casstore.objects import ObjectId, ObjType
from casstore.releases import Release
from casstore.sources.base import ObjectSource
from casstore.trees import Entry, Kind, Storage, decode_tree, encode_tree

log = logging.getLogger("casstore.prefetch")

FORMAT = "casstore-prefetch"
VERSION = 1
LIST_NAME = b"prefetch.json"
MAX_LIST_BYTES = 16 << 20
MAX_OBJECTS = 1_000_000
META_KEY = "prefetch"
DATA, META = "data", "meta"  # an access that read bytes, or only looked a path up
BATCH = 32  # objects per prefetch() call: one batch of parallel requests
WORKERS = 16  # fetch() threads when the source has no batch method
Warm = Callable[[str, set[ObjectId]], set[ObjectId]]


# -- the list ------------------------------------------------------------------------
@dataclass
class PrefetchList:
    """One variant's list: objects in first-need order, and which files need which."""

    level: str | None
    root: str
    overlay: str | None
    objects: list[tuple[ObjectId, int]] = field(default_factory=list)
    files: list[tuple[str, list[int]]] = field(default_factory=list)

    def encode(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "level": self.level or "",
               "root": self.root, "overlay": self.overlay,
               "objects": [[str(o), n] for o, n in self.objects],
               "files": [[p, idx] for p, idx in self.files]}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PrefetchList:
        """Strict: any deviation from FORMAT §6.5 is a FormatError (the list is then
        ignored; it never fails a mount)."""
        if len(raw) > MAX_LIST_BYTES:
            raise FormatError(f"prefetch list is {len(raw)} bytes (limit {MAX_LIST_BYTES})")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise FormatError("prefetch list is not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
                doc.get("version") != VERSION:
            raise FormatError("not a casstore-prefetch version 1 document")
        level, root, overlay = doc.get("level"), doc.get("root"), doc.get("overlay")
        objs, files = doc.get("objects"), doc.get("files")
        if not isinstance(level, str) or not isinstance(root, str) or \
                not (overlay is None or isinstance(overlay, str)) or \
                not isinstance(objs, list) or not isinstance(files, list) or \
                len(objs) > MAX_OBJECTS:
            raise FormatError("prefetch list: malformed fields")
        objects = [_object(o) for o in objs]
        return cls(level or None, root, overlay, objects,
                   [_file(f, len(objects)) for f in files])

    def oids(self) -> list[ObjectId]:
        return [o for o, _n in self.objects]

    def total_bytes(self) -> int:
        return sum(n for _o, n in self.objects)

    def file_objects(self) -> list[tuple[str, set[ObjectId]]]:
        """Each path with the ids behind it, in first-access order (file-cache warm-up:
        a file was read iff its own chunk or blob id is among them)."""
        return [(p, {self.objects[i][0] for i in idx}) for p, idx in self.files]


def _object(item: object) -> tuple[ObjectId, int]:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and type(item[1]) is int and item[1] >= 0):
        raise FormatError("prefetch list: malformed object entry")
    try:
        return ObjectId.parse(item[0]), item[1]
    except (CasError, ValueError):
        raise FormatError(f"prefetch list: bad object id {item[0][:80]!r}") from None


def _file(item: object, n: int) -> tuple[str, list[int]]:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], list)
            and all(type(i) is int and 0 <= i < n for i in item[1])):
        raise FormatError("prefetch list: malformed file entry")
    return item[0], item[1]


# -- recording -----------------------------------------------------------------------
class AccessRecorder:
    """Paths a mount served, once each, in first-access order (thread-safe).

    A path first only looked up and later read keeps its first position and
    becomes a data access."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, path: str, how: str) -> None:
        path = path.strip("/")
        if not path:
            return
        old = self._seen.get(path)
        if old == DATA or old == how:
            return
        with self._lock:
            if self._seen.get(path) != DATA:
                self._seen[path] = how

    def accesses(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._seen.items())

    def save(self, path: Path) -> None:
        """Write the accesses as JSON (the daemon does it once, at unmount)."""
        text = json.dumps({"format": "casstore-accesses", "version": 1,
                           "accesses": self.accesses()})
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def load_accesses(path: Path) -> list[tuple[str, str]]:
    """What :meth:`AccessRecorder.save` wrote (a FormatError for anything else)."""
    try:
        doc = json.loads(path.read_text())
        items = doc["accesses"]
        out = [(str(p), str(h)) for p, h in items]
    except (OSError, ValueError, KeyError, TypeError):
        raise FormatError(f"{path}: not an access record") from None
    if any(h not in (DATA, META) for _p, h in out):
        raise FormatError(f"{path}: bad access kind")
    return out


def build_list(vfs, accesses: Iterable[tuple[str, str]]) -> PrefetchList:
    """The objects behind each accessed path of ``vfs`` (a :class:`casstore.vfs.VFS`):
    the trees of every directory on the path and, for data accesses, the file's
    chunk, pack or blob and its chunks.  Paths that no longer resolve contribute
    the trees walked so far (a failed lookup needs them too)."""
    index: dict[ObjectId, int] = {}
    objects: list[tuple[ObjectId, int]] = []
    files: list[tuple[str, list[int]]] = []

    def add(oid: ObjectId | None, mine: list[int]) -> None:
        if oid is None:
            return
        i = index.get(oid)
        if i is None:
            i = index[oid] = len(objects)
            objects.append((oid, vfs.reader.source.stored_size(oid) or 0))
        if i not in mine:
            mine.append(i)

    def add_dir(node, mine: list[int]) -> None:
        add(node.entry.oid, mine)
        if node.overlay is not None:
            add(node.overlay.oid, mine)

    for path, how in accesses:
        mine: list[int] = []
        add_dir(vfs.root, mine)
        parts = [p for p in path.split("/") if p]
        node = vfs.root
        try:
            for k in range(len(parts)):
                node = vfs.lookup("/" + "/".join(parts[:k + 1]))
                if node.entry.kind == Kind.DIR:
                    add_dir(node, mine)
        except NotFound:
            node = None
        if node is not None and how == DATA and node.entry.kind == Kind.FILE and \
                node.entry.storage != Storage.INLINE:
            add(node.entry.oid, mine)
            if node.entry.storage == Storage.BLOB:
                for c in vfs.reader.file_chunk_ids(node.entry):
                    add(c, mine)
        files.append((path, mine))
    info = vfs.info
    over = vfs.root.overlay.oid if vfs.root.overlay is not None else None
    return PrefetchList(info.level, str(vfs.root.entry.oid), str(over) if over else None,
                        objects, files)


# -- storing and loading -------------------------------------------------------------
def store_list(snap, plist: PrefetchList) -> ObjectId:
    """Put the list as a chunk inside a one-entry tree (FORMAT §6.5); the tree's id."""
    raw = plist.encode()
    chunk = snap.put_meta(ObjType.CHUNK, raw)
    entry = Entry(LIST_NAME, Kind.FILE, 0o644, len(raw), 0, Storage.CHUNK, chunk)
    return snap.put_meta(ObjType.TREE, encode_tree([entry]))


def list_ids(rel: Release) -> dict[str, ObjectId]:
    """``meta.prefetch`` as level -> prefetch tree id; a malformed value is a FormatError.

    Walkers of release trees (gc, fsck, push, mirror) add these to the root and
    overlays so that a list is kept and copied with its release."""
    raw = rel.meta.get(META_KEY) if isinstance(rel.meta, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FormatError(f"release {rel.name}@{rel.revision}: meta.prefetch is not an object")
    try:
        return {str(k): ObjectId.parse(v) for k, v in raw.items()}
    except (CasError, ValueError, AttributeError, TypeError):
        raise FormatError(f"release {rel.name}@{rel.revision}: bad id in meta.prefetch") \
            from None


def load_list(source: ObjectSource, rel: Release, level: str | None) -> PrefetchList | None:
    """The verified list for ``level`` of ``rel``, or None if the release has none.

    Raises a CasError for a list that is missing, fails its id (tampered), is
    malformed or was recorded for other trees."""
    tid = list_ids(rel).get(level or "")
    if tid is None:
        return None
    entries = decode_tree(source.fetch(tid, ObjType.TREE))
    if len(entries) != 1 or entries[0].name != LIST_NAME or entries[0].kind != Kind.FILE \
            or entries[0].storage != Storage.CHUNK or entries[0].oid is None \
            or entries[0].size > MAX_LIST_BYTES:
        raise FormatError(f"prefetch tree {tid} does not hold one prefetch.json chunk")
    raw = source.fetch(entries[0].oid, ObjType.CHUNK)
    plist = PrefetchList.decode(raw)
    overlay = rel.variants.get(level) if level else None
    if plist.root != rel.root or plist.overlay != overlay:
        raise FormatError(f"prefetch list {tid} was recorded for other trees")
    return plist


# -- replay --------------------------------------------------------------------------
@dataclass
class Progress:
    """What ``cas status`` shows while (and after) a list is replayed."""

    state: str = "pending"  # pending, loading, running, done, failed, none (no list)
    total: int = 0
    done: int = 0
    cached: int = 0
    errors: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    files_warmed: int = 0
    seconds: float = 0.0
    note: str = ""

    def summary(self) -> dict:
        return dict(self.__dict__)


class Replay:
    """Fetch a list's objects into the cache, in the background, bounded.

    ``source`` is the composed source under the client's known-bad wrapper: its
    ``prefetch(oids)`` batch method is used when it has one (an HTTP source behind
    an ObjectCache: ``BATCH`` requests in flight), else ``WORKERS`` threads call
    ``fetch`` (a local, NFS or CVMFS folder: this warms the OS and CVMFS caches).
    ``warm(path, oids)`` is called for each listed path: the FileCache starts its
    whole-file copy of a large file that was read and returns the ids that copy
    fetches (with a batch source after the batches, else before the fetches,
    which then skip those ids).  Nothing raised here reaches a reader.
    """

    def __init__(self, load: Callable[[], PrefetchList | None], source: ObjectSource,
                 warm: Warm | None = None, batch: int = BATCH,
                 workers: int = WORKERS) -> None:
        self._load, self.source, self.warm = load, source, warm
        self.batch, self.workers = batch, workers
        self.progress = Progress()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True, name="prefetch-list")
        self.thread.start()

    def summary(self) -> dict:
        return self.progress.summary()

    def run(self) -> None:
        p, t0 = self.progress, time.monotonic()
        p.state = "loading"
        try:
            plist = self._load()
            if plist is None:
                p.state, p.note = "none", "release has no prefetch list for this level"
                return
            p.total, p.bytes_total, p.state = len(plist.objects), plist.total_bytes(), "running"
            batch_fn = getattr(self.source, "prefetch", None)
            if batch_fn is not None:  # into the object cache first; copies read from it
                self._batches(batch_fn, plist)
                self._warm(plist)
            else:  # whole-file copies fetch their own chunks: fetch only the rest
                self._fetch_all(plist, self._warm(plist))
            p.state = "done"
            log.info("prefetch: %d of %d objects (%d bytes) in %.2fs, %d errors",
                     p.done, p.total, p.bytes_done, time.monotonic() - t0, p.errors)
        except CasError as exc:
            p.state, p.note = "failed", str(exc)
            log.warning("prefetch list not used: %s", exc)
        except Exception as exc:  # noqa: BLE001 - advisory: never take the mount down
            p.state, p.note = "failed", f"internal error: {exc}"
            log.exception("prefetch failed")
        finally:
            p.seconds = round(time.monotonic() - t0, 3)

    def _batches(self, fn: Callable, plist: PrefetchList) -> None:
        sizes, oids = dict(plist.objects), plist.oids()
        for i in range(0, len(oids), self.batch):
            if self.stop.is_set():
                return
            self._batch(fn, oids[i:i + self.batch], sizes)

    def _fetch_all(self, plist: PrefetchList, skip: set[ObjectId]) -> None:
        sizes = dict(plist.objects)
        for oid in skip & sizes.keys():  # fetched by a whole-file copy
            self._count(oid, True, sizes)
        oids = [o for o in plist.oids() if o not in skip]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for oid, ok in zip(oids, pool.map(self._fetch_one, oids), strict=True):
                self._count(oid, ok, sizes)

    def _batch(self, fn: Callable, part: list[ObjectId], sizes: dict) -> None:
        try:
            res = fn(part)
        except Exception as exc:  # noqa: BLE001 - advisory: count the batch, go on
            log.warning("prefetch batch of %d failed: %s", len(part), exc)
            self.progress.errors += len(part)
            self.progress.done += len(part)
            return
        failed = getattr(res, "failed", None) or {}
        self.progress.cached += int(getattr(res, "cached", 0) or 0)
        for oid in part:
            self._count(oid, oid not in failed, sizes)
        for oid, exc in list(failed.items())[:3]:
            log.warning("prefetch of %s failed: %s", oid, exc)

    def _fetch_one(self, oid: ObjectId) -> bool:
        if self.stop.is_set():
            return False
        try:
            self.source.fetch(oid)
            return True
        except CasError as exc:
            log.warning("prefetch of %s failed: %s", oid, exc)
            return False

    def _count(self, oid: ObjectId, ok: bool, sizes: dict) -> None:
        p = self.progress
        p.done += 1
        if ok:
            p.bytes_done += sizes.get(oid, 0)
        else:
            p.errors += 1

    def _warm(self, plist: PrefetchList) -> set[ObjectId]:
        """Start whole-file copies; the ids those copies fetch themselves."""
        covered: set[ObjectId] = set()
        if self.warm is None:
            return covered
        for path, oids in plist.file_objects():
            if self.stop.is_set():
                break
            try:
                got = self.warm(path, oids)
            except CasError as exc:
                log.debug("prefetch warm-up of %s: %s", path, exc)
                continue
            if got:
                self.progress.files_warmed += 1
                covered.update(got)
        return covered
