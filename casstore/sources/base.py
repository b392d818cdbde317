"""The object source interface: every place objects and releases can be read from.

A source returns *stored* bytes (``read_stored``) and *verified* payloads
(``fetch``).  Sources compose: a wrapper such as :class:`~casstore.sources.knownbad.KnownBad`
or the on-disk object cache is itself an ``ObjectSource`` around another one, so
the filesystem model never needs to know what is underneath.

Errors a source raises, and what the caller should do:

* :class:`~casstore.errors.ObjectMissing` - the object is not there (404): give up
  or try another source.
* :class:`~casstore.errors.RemoteError` - temporary (timeout, 5xx, connection
  refused): retry later or fail over.
* :class:`~casstore.errors.ObjectCorrupt` - bytes arrived but do not verify: try
  another source, never use them.
"""

from __future__ import annotations

from typing import Protocol

from casstore.objects import ObjectId, ObjType, decode


class ObjectSource(Protocol):
    """Where stored objects, refs and release documents are read from."""

    def read_stored(self, oid: ObjectId) -> bytes:
        """The stored (framed, compressed) bytes of an object, unverified."""
        ...

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        """The object's raw payload, verified against its id (and type, if given)."""
        ...

    def release_names(self) -> list[str]:
        ...

    def release_revisions(self, name: str) -> list[int]:
        """Revisions published under ``name``, ascending."""
        ...

    def read_release(self, name: str, revision: int) -> bytes:
        """The signed release document bytes (unverified)."""
        ...


def verified(oid: ObjectId, stored: bytes, expect: ObjType | None = None) -> bytes:
    """Decode stored bytes and check them against ``oid``: the one verify step."""
    _kind, raw = decode(oid, stored, expect)
    return raw


def fetch(source: ObjectSource, oid: ObjectId, expect: ObjType | None = None) -> bytes:
    """Read and verify an object; never returns bytes that fail their hash."""
    return source.fetch(oid, expect)
