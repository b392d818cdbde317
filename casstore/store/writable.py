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
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import CasError, NotFound, ObjectCorrupt, ObjectMissing, StoreError
from casstore.fileio.fsutil import TMP_PREFIX, atomic_write, os_error
from casstore.fileio.safeio import read_regular_stat
from casstore.format import release_index
from casstore.format.layout import (
    MAX_STORED_SIZE,
    names_index_relpath,
    object_path,
    release_path,
    revisions_index_relpath,
)
from casstore.format.names import check_ref_name
from casstore.format.objects import (
    MAX_RAW_SIZE,
    ObjectId,
    ObjType,
    decode,
    encode,
    is_object_id,
)
from casstore.sources.local import LocalSource
from casstore.store.index import Index, IndexEntry

FORMAT_NAME = "casstore"
FORMAT_VERSION = 1
CONFIG_FILE = "casstore.json"
# Writers store a payload raw when zstd does not make it smaller (FORMAT §3.2).
log = logging.getLogger(__name__)
INDEX_BATCH = 512  # index entries per LMDB write transaction inside batched_index()
_INDEX_OPEN = threading.Lock()  # LMDB refuses to open one environment twice per process


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
    def from_json(cls, doc: object) -> StoreSettings:
        """Parse casstore.json, refusing settings a writer could not work with."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise StoreError("not a casstore store (bad casstore.json)")
        if doc.get("version") != FORMAT_VERSION:
            raise StoreError(f"unsupported store format version {doc.get('version')}")
        ch, co = doc.get("chunking"), doc.get("compression")
        if not isinstance(ch, dict) or not isinstance(co, dict):
            raise StoreError("casstore.json: 'chunking' and 'compression' must be objects")
        s = cls(_setting(ch, "min"), _setting(ch, "avg"), _setting(ch, "max"),
                _setting(ch, "inline_max", low=0), _setting(ch, "pack_max", cls.pack_max, low=0),
                _setting(co, "level", low=-(1 << 17), high=22))
        if not s.chunk_min <= s.chunk_avg <= s.chunk_max <= MAX_RAW_SIZE:
            raise StoreError("casstore.json: chunk sizes must satisfy min <= avg <= max <= "
                             f"{MAX_RAW_SIZE} (got {s.chunk_min}, {s.chunk_avg}, {s.chunk_max})")
        if s.inline_max > MAX_RAW_SIZE or s.pack_max > MAX_RAW_SIZE:
            raise StoreError(f"casstore.json: inline_max and pack_max must be <= {MAX_RAW_SIZE}")
        return s


def _setting(section: dict, key: str, default: int | None = None, *, low: int = 64,
             high: int = MAX_RAW_SIZE) -> int:
    """One integer setting in [low, high]; a one-line error names the bad key."""
    val = section.get(key, default)
    if isinstance(val, bool) or not isinstance(val, int) or not low <= val <= high:
        raise StoreError(f"casstore.json: {key} must be an integer in [{low}, {high}], "
                         f"not {val!r}")
    return val


def read_object_file(path: Path) -> tuple[bytes, os.stat_result]:
    """Read one object file as hostile input (no symlink, FIFO or device, bounded
    size checked before reading: :mod:`casstore.fileio.safeio`), with its fstat."""
    got = read_regular_stat(path, MAX_STORED_SIZE, f"object file {path}",
                            corrupt=ObjectCorrupt)
    if got is None:
        raise ObjectMissing(f"object file {path} is missing")
    return got


def type_fits(stored: ObjType, wanted: ObjType) -> bool:
    """Whether an object stored as ``stored`` can serve a reference that wants ``wanted``.

    Ids do not cover the type, so a chunk's bytes can equal a tree's or a blob's
    encoding.  A chunk is uninterpreted bytes, so any verified object serves a chunk
    reference; a tree or blob reference needs that exact type (FORMAT §3.3).
    """
    return wanted == ObjType.CHUNK or stored == wanted


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
        self._pending: list[tuple[ObjectId, IndexEntry]] = []
        self._pending_lock = threading.Lock()
        self._batching = 0

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> Store:
        """Open the store at ``root``; only ``create`` (``cas init``) makes a new one, so
        a mistyped ``--store`` is an error, never a fresh empty store."""
        root = Path(root)
        cfg = root / CONFIG_FILE
        if not os.path.lexists(cfg):
            if not create:
                raise StoreError(f"no store at {root}: 'cas init' creates one (with the "
                                 "same --store or $CAS_STORE)")
            return cls.init(root)
        source = LocalSource(root)  # checks the format document (bounded read)
        try:
            settings = StoreSettings.from_json(json.loads(source.read_format() or b""))
        except (ValueError, OSError):
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
        """The LMDB index, opened on first use (from any of put's worker threads)."""
        if self._index is None:
            with _INDEX_OPEN:
                if self._index is None:
                    self._index = Index(self.root / "index")
        return self._index

    def reset_index(self) -> Index:
        """Throw the index away (even a garbage LMDB file) and open a new, empty one."""
        self.close()
        self._index = Index.recreate(self.root / "index")
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
        """True if the index lists the object: the cheap has-lookup (no file I/O).

        The index may lag behind the object files after a crash (a false "no" only
        costs a re-check); ``cas fsck`` reports, and ``--rebuild-index`` fixes, drift.
        """
        return self.index.get(oid) is not None

    def lookup(self, oid: ObjectId) -> IndexEntry | None:
        """Type and sizes of an object from the index, or None if it is not listed."""
        return self.index.get(oid)

    def verified_present(self, oid: ObjectId) -> bool:
        """True if the object file is there and known good: the index's verified marker
        matches its ctime and size (FORMAT §8).  No marker, or a file changed since,
        counts as absent, so it is sent again and ``put_raw`` re-checks or repairs it."""
        entry = self.lookup(oid)
        if entry is None or entry.verified_ctime == 0:
            return False
        try:
            st = os.lstat(object_path(self.root, oid))
        except FileNotFoundError:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_ctime_ns == entry.verified_ctime
                and st.st_size == entry.stored_size)

    @contextmanager
    def batched_index(self) -> Iterator[None]:
        """Record the index entries of puts in this block a few hundred per LMDB write
        transaction instead of one each (``cas put`` stores thousands of objects);
        whatever is still buffered is recorded on the way out, even on error."""
        with self._pending_lock:
            self._batching += 1
        try:
            yield
        finally:
            with self._pending_lock:
                self._batching -= 1
                items, self._pending = self._pending, []
            if items:
                self.index.add(items)

    def _record(self, oid: ObjectId, entry: IndexEntry) -> None:
        """The one place a write reaches the index (FORMAT §8)."""
        items: list[tuple[ObjectId, IndexEntry]] = []
        with self._pending_lock:
            self._pending.append((oid, entry))
            if not self._batching or len(self._pending) >= INDEX_BATCH:
                items, self._pending = self._pending, []
        if items:
            self.index.add(items)

    def put_raw(self, kind: ObjType, raw: bytes | memoryview,
                oid: ObjectId | None = None) -> ObjectId:
        """Store an object, or reuse a present copy once it is proven good.

        A present file is trusted without reading it only while the index's
        verified marker matches its ctime and size; otherwise it is decoded, and a
        corrupt, unreadable or (for a tree or blob) wrong-typed file is replaced
        atomically by the good copy being put (FORMAT §3.3: the one case where an
        object file is rewritten).  Every reuse refreshes the file's mtime, so gc's
        grace period protects objects a new tree reuses.  The new entry (a new
        object, a repair, or a refreshed marker) goes into the index here
        (see :meth:`batched_index`).
        """
        oid = oid or ObjectId.of(raw)
        entry = self._put_file(kind, raw, oid)
        if entry is not None:
            self._record(oid, entry)
        return oid

    def _put_file(self, kind: ObjType, raw: bytes | memoryview,
                  oid: ObjectId) -> IndexEntry | None:
        """put_raw's file work; the entry to record, or None if nothing changed."""
        path = object_path(self.root, oid)
        known = self.index.get(oid)
        for _attempt in range(4):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                entry = self._write_object(kind, raw, path, replace=False)
                if entry is not None:
                    return entry
                continue  # a concurrent writer stored it first: check its copy
            if known is None or not self._trusted(known, st, kind, len(raw)):
                known = self._check_present(kind, oid, path, len(raw))
                if known is None:
                    return self._write_object(kind, raw, path, replace=True)
            try:
                os.utime(path)  # gc's grace period counts from the last reuse
                st = os.lstat(path)
            except FileNotFoundError:
                known = None
                continue
            return IndexEntry(known.kind, len(raw), st.st_size, st.st_ctime_ns)
        raise StoreError(f"object {oid} keeps changing under {path}; is another "
                         "program writing to the store?")

    @staticmethod
    def _trusted(known: IndexEntry, st: os.stat_result, kind: ObjType, raw_size: int) -> bool:
        return (known.verified_ctime != 0 and known.verified_ctime == st.st_ctime_ns
                and known.stored_size == st.st_size and known.raw_size == raw_size
                and stat.S_ISREG(st.st_mode) and type_fits(known.kind, kind))

    def _check_present(self, kind: ObjType, oid: ObjectId, path: Path,
                       raw_size: int) -> IndexEntry | None:
        """Decode a present file; None if it must be replaced (damaged or wrong type)."""
        try:
            stored, st = read_object_file(path)
            have, _raw = decode(oid, stored)
        except ObjectMissing:
            return None
        except CasError as exc:
            log.warning("repairing object %s: %s", oid, exc)
            return None
        if not type_fits(have, kind):
            log.warning("object %s is stored as a %s; rewriting it as a %s (same bytes)",
                        oid, have.name.lower(), kind.name.lower())
            return None
        return IndexEntry(have, raw_size, st.st_size, st.st_ctime_ns)

    def _write_object(self, kind: ObjType, raw: bytes | memoryview, path: Path, *,
                      replace: bool) -> IndexEntry | None:
        """Write a new object file (or replace a bad one); None if another writer won."""
        stored = encode(kind, raw, self.settings.zstd_level)
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from None
        if replace:
            self._move_folder_aside(path)
        if not atomic_write(path, stored, self.tmp, durable=self.settings.durable,
                            replace=replace):
            return None
        st = os.lstat(path)
        return IndexEntry(kind, len(raw), len(stored), st.st_ctime_ns)

    def _move_folder_aside(self, path: Path) -> None:
        """A folder planted at an object path is damage like any other non-file (FORMAT
        §3.3), but a rename cannot replace a folder: move it into ``tmp/`` (same file
        system, atomic), then delete it there, never following a link inside it."""
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return
            aside = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.tmp))
            os.rename(path, aside / "planted")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, path) from None
        log.warning("replaced a folder planted at object path %s", path)
        shutil.rmtree(aside, ignore_errors=True)

    def iter_object_ids(self) -> Iterator[ObjectId]:
        """Every well-named object file in the store (the ground truth, not the index).

        Stray names are skipped here; ``cas fsck`` reports them.
        """
        objdir = self.root / "objects"
        for sub in sorted(os.listdir(objdir)):
            if len(sub) != 2:
                continue
            try:
                names = sorted(os.listdir(objdir / sub))
            except (NotADirectoryError, PermissionError):
                continue
            for name in names:
                text = "b3-" + sub + name
                if is_object_id(text):
                    yield ObjectId.parse(text)

    def delete_object(self, oid: ObjectId) -> None:
        """Remove an object file (gc's sweep; the caller drops its index entry)."""
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
