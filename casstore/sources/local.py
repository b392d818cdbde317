"""A store folder read as plain files: a local disk, NFS, or a read-only CVMFS mirror.

Every file is read through :mod:`casstore.fileio.safeio`: opened without following
symlinks or blocking, checked with ``fstat`` (regular file, within its limit)
before any byte is read.  Releases are listed through the release index
(docs/FORMAT.md §6.4); only a store written before the index existed (no
``releases/_index.json``) is listed with ``readdir`` instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from casstore.errors import (
    CasError,
    FormatError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    StoreError,
)
from casstore.fileio.safeio import read_regular, stat_regular
from casstore.format import release_index
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_FORMAT_DOC,
    MAX_REF,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    RELEASE_SUFFIX,
    names_index_relpath,
    object_relpath,
    ref_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.names import check_ref_name
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType
from casstore.sources.base import verified
from casstore.sources.counters import CORRUPT, MISSING, SourceCounters


def check_format_doc(data: bytes | None, where: str) -> None:
    """Refuse a store written in a format version this reader does not know."""
    if data is None:
        return  # a bare mirror of objects/ and releases/ is still readable
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"{where}/{FORMAT_FILE} is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != "casstore":
        raise StoreError(f"{where} is not a casstore store (bad {FORMAT_FILE})")
    if doc.get("version") != 1:
        raise StoreError(f"{where}: unsupported store format version {doc.get('version')!r}")


def check_store_format(root: Path) -> None:
    """Refuse a store folder whose ``casstore.json`` this reader does not know."""
    check_format_doc(_read(Path(root) / FORMAT_FILE, MAX_FORMAT_DOC, f"{root}/{FORMAT_FILE}",
                           StoreError), str(root))


def _read(path: Path, limit: int, what: str, corrupt: type) -> bytes | None:
    return read_regular(path, limit, what, corrupt=corrupt)


class LocalSource:
    """A store directory read as plain files; never writes (it may be read-only)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.source_counters = [SourceCounters(str(self.root))]  # client metrics
        if not (self.root / "objects").is_dir():
            raise StoreError(f"{self.root} is not a casstore store (no objects/ folder)")
        check_format_doc(self.read_format(), str(self.root))

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"

    # -- objects -----------------------------------------------------------------
    def read_stored(self, oid: ObjectId) -> bytes:
        counters = self.source_counters[0]
        try:
            data = _read(self.root / object_relpath(oid), MAX_STORED_SIZE, f"object {oid}",
                         ObjectCorrupt)
        except CasError as exc:
            counters.failed(exc)
            raise
        if data is None:
            counters.error(MISSING)
            raise ObjectMissing(f"object {oid} is missing from {self.root}")
        counters.fetched(len(data))
        return data

    def read_head(self, oid: ObjectId) -> bytes:
        data = read_regular(self.root / object_relpath(oid), MAX_STORED_SIZE, f"object {oid}",
                            corrupt=ObjectCorrupt, max_bytes=HEADER_SIZE)
        if data is None:
            raise ObjectMissing(f"object {oid} is missing from {self.root}")
        return data

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        stored = self.read_stored(oid)
        try:
            return verified(oid, stored, expect)
        except ObjectCorrupt:
            self.source_counters[0].error(CORRUPT)
            raise

    def stored_size(self, oid: ObjectId) -> int | None:
        return stat_regular(self.root / object_relpath(oid), MAX_STORED_SIZE, f"object {oid}",
                            corrupt=ObjectCorrupt)

    # -- small files ---------------------------------------------------------------
    def read_ref(self, name: str) -> ObjectId:
        data = _read(self.root / ref_relpath(name), MAX_REF, f"ref {name!r}", FormatError)
        if data is None:
            raise NotFound(f"no ref named {name!r}")
        try:
            return ObjectId.parse(data.decode("ascii").strip())
        except (UnicodeDecodeError, FormatError):
            raise FormatError(f"ref {name!r} is damaged (not an object id)") from None

    def read_format(self) -> bytes | None:
        return _read(self.root / FORMAT_FILE, MAX_FORMAT_DOC, f"{self.root}/{FORMAT_FILE}",
                     StoreError)

    # -- releases ----------------------------------------------------------------
    def _names_index(self) -> list[str] | None:
        data = _read(self.root / names_index_relpath(), MAX_RELEASE_INDEX,
                     f"{self.root}/{names_index_relpath()}", FormatError)
        if data is None:
            return None
        return release_index.decode_names(data, f"release index {names_index_relpath()}")

    def release_names(self) -> list[str]:
        names = self._names_index()
        return names if names is not None else self.scan_release_names()

    def release_revisions(self, name: str) -> list[int]:
        rel = revisions_index_relpath(name)
        data = _read(self.root / rel, MAX_RELEASE_INDEX, f"{self.root}/{rel}", FormatError)
        if data is not None:
            return release_index.decode_revisions(data, name, f"release index {rel}")
        names = self._names_index()
        if names is None:  # a store from before the release index: list the folder
            return self.scan_revisions(name)
        if name in names:  # the names index ran ahead of this name's own index
            return []
        raise NotFound(f"no release named {name!r}")

    def read_release(self, name: str, revision: int) -> bytes:
        if type(revision) is not int or revision < 1:
            raise NotFound(f"release {name} has no revision {revision!r}")
        data = _read(self.root / release_relpath(name, revision), MAX_RELEASE_DOC,
                     f"release {name} revision {revision}", FormatError)
        if data is None:
            raise NotFound(f"release {name} revision {revision} does not exist")
        return data

    # -- the readdir fallback (older stores; the publisher's ground truth) --------
    def scan_release_names(self) -> list[str]:
        """Release folders found by listing ``releases/`` (not through the index)."""
        folder = self.root / "releases"
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        out = []
        for n in entries:
            try:
                check_ref_name(n)
            except StoreError:
                continue  # the index file, or a stray file: not a release name
            if (folder / n).is_dir():
                out.append(n)
        return out

    def scan_revisions(self, name: str) -> list[int]:
        """Revisions whose document file exists, found by listing the folder."""
        folder = self.root / "releases" / check_ref_name(name)
        try:
            files = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no release named {name!r}") from None
        stems = [f[: -len(RELEASE_SUFFIX)] for f in files if f.endswith(RELEASE_SUFFIX)]
        return sorted(int(x) for x in stems if len(x) == 12 and x.isascii() and x.isdigit()
                      and int(x) >= 1)

    def close(self) -> None:
        """Nothing to release: every read opens and closes its own file."""
