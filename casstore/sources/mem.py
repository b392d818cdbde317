"""An object source held in memory (as restic's mem backend), for tests and tools.

``MemSource`` keeps *stored* bytes by id, plus refs, release documents and a format
document, and answers like any other source: ``fetch`` decodes and hashes what it
holds, so a tampered entry is refused exactly as a damaged file or a lying server
would be.  Faults can be set per id, so callers can meet each error class a real
source raises without a real outage:

* ``"missing"`` - ObjectMissing, as a 404 or an absent file;
* ``"temporary"`` - RemoteError, as a timeout or EIO on NFS;
* ``"corrupt"`` - the stored bytes come back with one byte flipped, so the
  verification step itself (not the fault) raises ObjectCorrupt.

It counts reads per id and can hold every read at a gate (``gate``: a
``threading.Event``), so a caller can line up concurrent requests and see how many
reached the source.  Thread-safe; no I/O.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable

from casstore.errors import (
    FormatError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    RemoteError,
    UsageError,
)
from casstore.format.layout import MAX_STORED_SIZE
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, encode
from casstore.sources.base import ObjectSource, verified

MISSING, TEMPORARY, CORRUPT = "missing", "temporary", "corrupt"
FAULTS = (MISSING, TEMPORARY, CORRUPT)
FORMAT_DOC = json.dumps({"format": "casstore", "version": 1}).encode()
GATE_WAIT_S = 60.0  # a read held at a gate that is never opened fails, it does not hang


class MemSource:
    """An :class:`~casstore.sources.base.ObjectSource` in memory, with chosen faults."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.objects: dict[ObjectId, bytes] = {}
        self.refs: dict[str, ObjectId] = {}
        self.releases: dict[str, dict[int, bytes]] = {}
        self.format_doc: bytes | None = FORMAT_DOC
        self.faults: dict[ObjectId, str] = {}
        self.reads: Counter[ObjectId] = Counter()
        self.gate = gate
        self.closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemSource({len(self.objects)} objects)"

    # -- filling and faults ----------------------------------------------------------
    def put(self, kind: ObjType, raw: bytes) -> ObjectId:
        """Store ``raw`` as an object of ``kind``; its id."""
        oid = ObjectId.of(raw)
        self.add_stored(oid, encode(kind, raw))
        return oid

    def add_stored(self, oid: ObjectId, stored: bytes) -> None:
        """Hold ``stored`` under ``oid`` as given: unchecked, as a file or a server may."""
        with self._lock:
            self.objects[oid] = bytes(stored)

    @classmethod
    def copy_of(cls, source: ObjectSource, oids: Iterable[ObjectId],
                gate: threading.Event | None = None) -> MemSource:
        """The stored bytes of ``oids`` from ``source`` (and its format document)."""
        mem = cls(gate)
        for oid in oids:
            mem.add_stored(oid, source.read_stored(oid))
        mem.format_doc = source.read_format()
        return mem

    def set_fault(self, oid: ObjectId, fault: str | None) -> None:
        """Answer ``fault`` (missing, temporary, corrupt) for ``oid`` from now on;
        None answers normally again."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {fault!r}")
        with self._lock:
            if fault is None:
                self.faults.pop(oid, None)
            else:
                self.faults[oid] = fault

    # -- objects ---------------------------------------------------------------------
    def read_stored(self, oid: ObjectId) -> bytes:
        """The stored bytes, unverified (a "corrupt" fault flips one of them)."""
        if self.closed:
            raise UsageError("memory source is closed")
        with self._lock:
            self.reads[oid] += 1
        if self.gate is not None and not self.gate.wait(GATE_WAIT_S):
            raise RemoteError(f"object {oid}: the gate stayed closed (temporary)")
        with self._lock:
            fault = self.faults.get(oid)
            stored = self.objects.get(oid)
        if fault == TEMPORARY:
            raise RemoteError(f"object {oid}: unavailable right now (temporary; retry)")
        if stored is None or fault == MISSING:
            raise ObjectMissing(f"object {oid} is missing from memory")
        if len(stored) > MAX_STORED_SIZE:
            raise ObjectCorrupt(f"object {oid} is too large ({len(stored)} bytes, "
                                f"limit {MAX_STORED_SIZE})")
        if fault == CORRUPT:
            flipped = bytearray(stored)
            flipped[len(flipped) // 2] ^= 0x40
            return bytes(flipped)
        return stored

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        return verified(oid, self.read_stored(oid), expect)

    def read_head(self, oid: ObjectId) -> bytes:
        return self.read_stored(oid)[:HEADER_SIZE]

    def stored_size(self, oid: ObjectId) -> int | None:
        with self._lock:
            fault = self.faults.get(oid)
            stored = self.objects.get(oid)
        if fault == TEMPORARY:
            raise RemoteError(f"object {oid}: unavailable right now (temporary; retry)")
        if stored is None or fault == MISSING:
            return None
        return len(stored)

    # -- refs and releases -----------------------------------------------------------
    def read_ref(self, name: str) -> ObjectId:
        try:
            return self.refs[name]
        except KeyError:
            raise NotFound(f"no ref named {name!r}") from None

    def read_format(self) -> bytes | None:
        return self.format_doc

    def release_names(self) -> list[str]:
        return sorted(self.releases)

    def release_revisions(self, name: str) -> list[int]:
        try:
            return sorted(self.releases[name])
        except KeyError:
            raise NotFound(f"no release named {name!r}") from None

    def read_release(self, name: str, revision: int) -> bytes:
        try:
            return self.releases[name][revision]
        except KeyError:
            raise NotFound(f"release {name} revision {revision} does not exist") from None

    def add_release(self, name: str, revision: int, doc: bytes) -> None:
        if type(revision) is not int or revision < 1:
            raise FormatError(f"release revision must be a positive integer, not {revision!r}")
        self.releases.setdefault(name, {})[revision] = bytes(doc)

    def close(self) -> None:
        self.closed = True
