"""A writable local store: objects, refs, releases, the index and the lock.

Layout (docs/FORMAT.md has the normative version)::

    casstore.json        format version and writer settings
    objects/ab/cdef...   one file per object (header + zstd payload)
    refs/NAME            a text file holding one object id
    releases/NAME/000000000007.release   signed release documents
    releases/_index.json, releases/NAME/_index.json   the release index
    index/               LMDB (a rebuildable cache)
    tmp/                 temporary files of writes in progress
    lock                 flock: shared for writers, exclusive for gc's sweep
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import NotFound, StoreError
from casstore.fsutil import atomic_write
from casstore.index import Index, IndexEntry
from casstore.names import check_ref_name
from casstore.objects import ObjectId, ObjType, encode, is_object_id
from casstore.sources import release_index
from casstore.sources.layout import (
    names_index_relpath,
    object_path,
    release_path,
    revisions_index_relpath,
)
from casstore.sources.local import LocalSource

FORMAT_NAME = "casstore"
FORMAT_VERSION = 1
CONFIG_FILE = "casstore.json"


@dataclass
class StoreSettings:
    """Writer settings; they change ids of nothing, only dedup and speed."""

    chunk_min: int = 512 * 1024
    chunk_avg: int = 1024 * 1024
    chunk_max: int = 4 * 1024 * 1024
    inline_max: int = 16 * 1024
    pack_max: int = 256 * 1024
    zstd_level: int = 3
    durable: bool = True

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "hash": "blake3-256",
            "chunking": {"algorithm": "fastcdc-2016", "min": self.chunk_min,
                         "avg": self.chunk_avg, "max": self.chunk_max,
                         "inline_max": self.inline_max, "pack_max": self.pack_max},
            "compression": {"codec": "zstd", "level": self.zstd_level},
        }

    @classmethod
    def from_json(cls, doc: dict) -> StoreSettings:
        if doc.get("format") != FORMAT_NAME:
            raise StoreError("not a casstore store (bad casstore.json)")
        if doc.get("version") != FORMAT_VERSION:
            raise StoreError(f"unsupported store format version {doc.get('version')}")
        ch, co = doc["chunking"], doc["compression"]
        return cls(ch["min"], ch["avg"], ch["max"], ch["inline_max"],
                   ch.get("pack_max", cls.pack_max), co["level"])


class Store:
    """A local store opened for reading and writing.

    It *contains* a :class:`LocalSource` (``store.source``) for every read, so
    writers, fsck and gc read through the same bounded, checked path as a
    mount; the read methods below only delegate to it, so a Store can be handed
    to a reader where a source is expected.
    """

    def __init__(self, root: Path, settings: StoreSettings) -> None:
        self.source = LocalSource(root)
        self.root = self.source.root
        self.settings = settings
        self.tmp = self.root / "tmp"
        self._index: Index | None = None

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> Store:
        root = Path(root)
        cfg = root / CONFIG_FILE
        if not cfg.exists():
            if not create:
                raise StoreError(f"no store at {root} (run 'cas init' or 'cas put' first)")
            return cls.init(root)
        source = LocalSource(root)  # checks the format document (bounded read)
        try:
            settings = StoreSettings.from_json(json.loads(source.read_format() or b""))
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{cfg} is damaged") from None
        return cls(root, settings)

    @classmethod
    def init(cls, root: Path, settings: StoreSettings | None = None) -> Store:
        settings = settings or StoreSettings()
        try:
            for sub in ("objects", "refs", "releases", "tmp"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / "lock").touch()
        except OSError as exc:
            raise StoreError(f"cannot create store at {root}: {exc.strerror}") from None
        atomic_write(root / CONFIG_FILE, json.dumps(settings.to_json(), indent=2).encode(),
                     root / "tmp", replace=False)
        store = cls.open(root)
        store.rebuild_release_index()  # from the start: readers never need readdir
        return store

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = Index(self.root / "index")
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Writers hold it shared; gc's sweep holds it exclusive."""
        with open(self.root / "lock", "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- reading: delegated to the contained source -------------------------------
    def read_stored(self, oid: ObjectId) -> bytes:
        return self.source.read_stored(oid)

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        return self.source.fetch(oid, expect)

    def read_head(self, oid: ObjectId) -> bytes:
        return self.source.read_head(oid)

    def stored_size(self, oid: ObjectId) -> int | None:
        return self.source.stored_size(oid)

    def read_ref(self, name: str) -> ObjectId:
        return self.source.read_ref(name)

    def read_format(self) -> bytes | None:
        return self.source.read_format()

    def release_names(self) -> list[str]:
        """Names in the release index *or* on disk: the writer's view.  gc must mark
        (and a publisher count) a document that an interrupted publish left unlisted,
        which a reader rightly does not see yet."""
        return sorted(set(self.source.release_names()) | set(self.source.scan_release_names()))

    def release_revisions(self, name: str) -> list[int]:
        """Revisions listed in the index or with a document on disk (see release_names)."""
        try:
            listed = self.source.release_revisions(name)
        except NotFound:
            listed = []
        revs = sorted(set(listed) | set(self.published_revisions(name)))
        if not revs and name not in self.release_names():
            raise NotFound(f"no release named {name!r}")
        return revs

    def read_release(self, name: str, revision: int) -> bytes:
        return self.source.read_release(name, revision)

    # -- objects -----------------------------------------------------------------
    def has(self, oid: ObjectId) -> bool:
        """True if the object file exists; refreshes its mtime for gc's grace period."""
        try:
            os.utime(object_path(self.root, oid))
            return True
        except FileNotFoundError:
            return False

    def put_raw(self, kind: ObjType, raw: bytes | memoryview,
                oid: ObjectId | None = None) -> tuple[ObjectId, IndexEntry | None]:
        """Store an object unless present; returns the index entry to record if new."""
        oid = oid or ObjectId.of(raw)
        if self.has(oid):
            return oid, None
        stored = encode(kind, raw, self.settings.zstd_level)
        dest = object_path(self.root, oid)
        dest.parent.mkdir(exist_ok=True)
        if not atomic_write(dest, stored, self.tmp, durable=self.settings.durable,
                            replace=False):
            return oid, None  # a concurrent writer stored it first
        return oid, IndexEntry(kind, len(raw), len(stored))

    def iter_object_ids(self) -> Iterator[ObjectId]:
        """Every object file name in the store (the ground truth, not the index)."""
        objdir = self.root / "objects"
        for sub in sorted(os.listdir(objdir)):
            if len(sub) != 2:
                continue
            for name in sorted(os.listdir(objdir / sub)):
                text = "b3-" + sub + name
                if is_object_id(text):
                    yield ObjectId.parse(text)

    def delete_object(self, oid: ObjectId) -> None:
        try:
            os.unlink(object_path(self.root, oid))
        except FileNotFoundError:
            pass

    # -- refs --------------------------------------------------------------------
    def set_ref(self, name: str, oid: ObjectId) -> None:
        check_ref_name(name)
        atomic_write(self.root / "refs" / name, f"{oid}\n".encode(), self.tmp)
        self.index.set_ref(name, oid)

    def get_ref(self, name: str) -> ObjectId:
        return self.source.read_ref(name)

    def refs(self) -> dict[str, ObjectId]:
        folder = self.root / "refs"
        return {n: self.get_ref(n) for n in sorted(os.listdir(folder))}

    # -- releases ----------------------------------------------------------------
    def write_release(self, name: str, revision: int, doc: bytes) -> Path:
        """Publish a release document, then the release index (FORMAT §6.4 order).

        An existing revision is never overwritten.  The objects and trees it names
        are already in place (the caller checked).
        """
        dest = release_path(self.root, name, revision)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not atomic_write(dest, doc, self.tmp, replace=False):
            raise StoreError(f"release {name} revision {revision} already exists")
        self.rebuild_release_index()
        return dest

    def published_revisions(self, name: str) -> list[int]:
        """Revisions whose document is on disk: the publisher's ground truth, which
        may run ahead of the index after an interrupted publish."""
        try:
            return self.source.scan_revisions(name)
        except NotFound:
            return []

    def rebuild_release_index(self) -> None:
        """Rewrite every release index file that differs from the documents on disk.

        Held under an exclusive flock on ``releases/`` so concurrent publishers never
        lose each other's entries; per-name files first, then the names file, so a
        reader never finds a listed name without its revisions.  Also migrates a
        store written before the index existed.
        """
        folder = self.root / "releases"
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            names = []
            for name in self.source.scan_release_names():
                revs = self.published_revisions(name)
                if not revs:
                    continue
                names.append(name)
                self._write_if_changed(revisions_index_relpath(name),
                                       release_index.encode_revisions(name, revs))
            self._write_if_changed(names_index_relpath(), release_index.encode_names(names))
        finally:
            os.close(fd)  # releases the flock

    def _write_if_changed(self, relpath: str, data: bytes) -> None:
        dest = self.root / relpath
        try:
            if dest.read_bytes() == data:
                return
        except OSError:
            pass
        atomic_write(dest, data, self.tmp)
