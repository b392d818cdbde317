"""Prefetch lists: what a real start of a release's workload reads, fetched ahead.

A cold node over a 25 ms link pays one round trip per object it reads on demand;
a Julia start reads a few hundred.  So ``cas depot build`` records, per variant,
which paths a real start reads from the mounted release (in first-access order)
and which objects are behind them, and stores that list *in* the release
(docs/FORMAT.md §6.5): ``meta.prefetch[level]`` names a one-entry tree holding
``prefetch.json``, so the signature covers it through its id and every walker of
release trees (gc, fsck, push, mirror) keeps it.  On mount the client fetches the
listed objects in bounded parallel batches into its cache while the first reads
are served (:class:`casstore.client.replay.Replay`).

This module is the model: the list format (:class:`PrefetchList`), the access
recorder the FUSE client feeds (:class:`AccessRecorder`), turning accesses into a
list over a VFS (:func:`build_list`), storing and loading the list
(:func:`store_list`, :func:`load_list`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import CasError, FormatError, NotFound
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Entry, Kind, Storage, decode_tree, encode_tree
from casstore.releases.release import Release
from casstore.sources.base import ObjectSource

log = logging.getLogger(__name__)

FORMAT = "casstore-prefetch"
VERSION = 1
LIST_NAME = b"prefetch.json"
MAX_LIST_BYTES = 16 << 20
MAX_OBJECTS = 1_000_000
DATA, META = "data", "meta"  # an access that read bytes, or only looked a path up


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
    """The objects behind each accessed path of ``vfs`` (a :class:`casstore.view.vfs.VFS`):
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


def load_list(source: ObjectSource, rel: Release, level: str | None) -> PrefetchList | None:
    """The verified list for ``level`` of ``rel``, or None if the release has none.

    Raises a CasError for a list that is missing, fails its id (tampered), is
    malformed or was recorded for other trees."""
    tid = rel.prefetch_ids().get(level or "")
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
