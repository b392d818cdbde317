"""The object source interface: every place objects and releases can be read from.

A source returns *stored* bytes (``read_stored``) and *verified* payloads
(``fetch``).  Sources compose: a wrapper such as :class:`~casstore.sources.knownbad.KnownBad`
or :class:`~casstore.sources.objcache.ObjectCache` is itself an ``ObjectSource``
around another one, so the filesystem model never needs to know what is underneath.
Nothing here needs to list a folder, so the same interface fits an HTTP remote:
releases are listed through the release index (docs/FORMAT.md §6.4).

Errors a source raises, and what the caller should do:

* :class:`~casstore.errors.ObjectMissing` - the object is not there (404): give up
  or try another source.  (:class:`~casstore.errors.NotFound` for a missing ref,
  release name or release document.)
* :class:`~casstore.errors.RemoteError` - temporary (timeout, EIO/ESTALE on NFS,
  connection refused, later a 5xx): retry later or fail over.  Never remembered.
* :class:`~casstore.errors.ObjectCorrupt` - bytes arrived but do not verify, or the
  file is not a plausible object (a FIFO, a symlink, too large): try another
  source, never use them.  :class:`~casstore.errors.FormatError` (a subclass) also
  covers a damaged release document, index or ref.
* :class:`~casstore.errors.StoreError` - the source itself is unusable (not a
  store, permission denied).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, decode, peek_type


class ObjectSource(Protocol):
    """Where stored objects, refs and release documents are read from.

    Every method is thread-safe: the FUSE loop, prefetch threads and server
    handlers share one source.
    """

    def read_stored(self, oid: ObjectId) -> bytes:
        """The stored (framed, compressed) bytes of an object, unverified."""
        ...

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        """The object's raw payload, verified against its id (and type, if given)."""
        ...

    def read_head(self, oid: ObjectId) -> bytes:
        """The first ``HEADER_SIZE`` stored bytes (fewer only if the object is shorter),
        unverified: enough for :func:`stored_type` without reading the object."""
        ...

    def stored_size(self, oid: ObjectId) -> int | None:
        """The stored size of an object, or None if it is not there (HTTP: HEAD)."""
        ...

    def read_ref(self, name: str) -> ObjectId:
        """The object id a ref names (NotFound if there is no such ref)."""
        ...

    def read_format(self) -> bytes | None:
        """The store's ``casstore.json`` bytes, or None if the source has none."""
        ...

    def release_names(self) -> list[str]:
        """Release names, sorted, from the release index (no readdir)."""
        ...

    def release_revisions(self, name: str) -> list[int]:
        """Revisions listed under ``name``, ascending (NotFound for an unknown name).

        A listed revision's document may still be missing (an index that runs
        ahead); :func:`casstore.releases.release.newest` skips those.
        """
        ...

    def read_release(self, name: str, revision: int) -> bytes:
        """The signed release document bytes, unverified (NotFound if absent)."""
        ...

    def close(self) -> None:
        """Release files, sockets and threads (idempotent)."""
        ...


def verified(oid: ObjectId, stored: bytes, expect: ObjType | None = None) -> bytes:
    """Decode stored bytes and check them against ``oid``: the one verify step."""
    _kind, raw = decode(oid, stored, expect)
    return raw


def fetch(source: ObjectSource, oid: ObjectId, expect: ObjType | None = None) -> bytes:
    """Read and verify an object; never returns bytes that fail their hash."""
    return source.fetch(oid, expect)


def stored_type(source: ObjectSource, oid: ObjectId) -> ObjType:
    """The type an object's header claims, from its first 16 bytes: a cheap hint (no
    decompression, no hash) for checks such as "is this root a tree" before signing."""
    return peek_type(oid, source.read_head(oid)[:HEADER_SIZE])


def source_layers(source: object) -> Iterator[object]:
    """The source and every source it wraps (``inner``), outermost first."""
    seen: set[int] = set()
    node: object | None = source
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = getattr(node, "inner", None)


class SourceWrapper:
    """Base of sources that wrap another (known-bad memory, the on-disk cache): every
    method passes through to ``inner``; a wrapper overrides only what it changes."""

    def __init__(self, inner: ObjectSource) -> None:
        self.inner = inner

    def read_stored(self, oid: ObjectId) -> bytes:
        return self.inner.read_stored(oid)

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        return self.inner.fetch(oid, expect)

    def read_head(self, oid: ObjectId) -> bytes:
        return self.inner.read_head(oid)

    def stored_size(self, oid: ObjectId) -> int | None:
        return self.inner.stored_size(oid)

    def read_ref(self, name: str) -> ObjectId:
        return self.inner.read_ref(name)

    def read_format(self) -> bytes | None:
        return self.inner.read_format()

    def release_names(self) -> list[str]:
        return self.inner.release_names()

    def release_revisions(self, name: str) -> list[int]:
        return self.inner.release_revisions(name)

    def read_release(self, name: str, revision: int) -> bytes:
        return self.inner.read_release(name, revision)

    def close(self) -> None:
        self.inner.close()
