"""A store served over HTTP(S): any static web server is a remote (FORMAT §10.2).

``HTTPSource(urls)`` reads the files of a store folder by their layout paths under
one or more base URLs (nginx, an S3 bucket, a CDN, ``cas serve``).  The requests,
fail-over between servers and proxies, timeouts, retries and body limits are the
:class:`~casstore.sources.transport.Transport`'s; this module says what each file
is and how its answer is checked:

* **Verified.**  Every object is decoded and hashed against its id (on a helper
  thread, as each server answers) before it is returned, so a wrong byte never
  leaves here and a server that sends one is skipped for the next.  An object's
  body is limited, from its first 16 bytes, to what its header allows
  (:func:`object_bound`).
* **Sorted errors.**  The transport's conclusion becomes ObjectMissing / NotFound
  (every server said missing), RemoteError / ServersUnreachable (temporary) or
  ObjectCorrupt / FormatError (bad bytes).
* Release documents and index files are only checked for shape (signatures are the
  caller's job) and are never cached here: the server is always asked.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

from casstore.errors import (
    CasError,
    FormatError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
)
from casstore.format import release_index
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_FORMAT_DOC,
    MAX_REF,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    names_index_relpath,
    object_relpath,
    ref_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.objects import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_RAW_SIZE,
    ObjectId,
    ObjType,
    decode,
)
from casstore.sources.local import check_format_doc
from casstore.sources.transport import (
    DIRECT,
    Fail,
    HTTPSettings,
    Transport,
    as_error,
    check_base_url,
    parse_proxies,
)

__all__ = ["DIRECT", "HTTPSettings", "HTTPSource", "check_base_url", "object_bound",
           "parse_proxies"]


class HTTPSource:
    """An :class:`~casstore.sources.base.ObjectSource` over base URLs, with fail-over."""

    def __init__(self, urls: str | Iterable[str], settings: HTTPSettings | None = None) -> None:
        self.transport = Transport(urls, settings)
        self.urls = self.transport.urls
        self.settings = self.transport.settings
        self.stats = self.transport.stats
        # client metrics, one per server: bytes and objects fetched, errors, fail-overs
        self.source_counters = self.transport.source_counters
        self._format_checked = False

    def __repr__(self) -> str:
        return f"HTTPSource({self.urls!r})"

    def close(self) -> None:
        self.transport.close()

    def suspend(self) -> None:
        """Stop the transport's threads until the next request (see
        :meth:`Transport.suspend`: ``cas mount`` before libfuse daemonises)."""
        self.transport.suspend()

    def _get(self, rel: str, limit: int, check: Callable[[Any], Any] | None,
             missing: Callable[[str], CasError], corrupt: type[CasError], *,
             method: str = "GET", first: int | None = None) -> Any:
        """Synchronous fetch with fail-over; the conclusion as the right CasError."""
        bound = object_bound if rel.startswith("objects/") else None
        try:
            return self.transport.run(self.transport.get(rel, limit, check, method=method,
                                                         first=first, bound=bound))
        except Fail as f:
            raise as_error(f, missing, corrupt) from None

    # -- objects -------------------------------------------------------------------
    def read_decoded(self, oid: ObjectId) -> tuple[ObjType, bytes, bytes]:
        """(type, raw, stored) of a verified object: the object cache stores ``stored``
        without decoding it a second time."""
        return self._get(object_relpath(oid), MAX_STORED_SIZE, _object_check(oid),
                         _missing_object(oid), ObjectCorrupt)

    def read_stored(self, oid: ObjectId) -> bytes:
        return self.read_decoded(oid)[2]

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        kind, raw, _stored = self.read_decoded(oid)
        # as objects.decode: any verified object serves a chunk reference (FORMAT §3.3)
        if expect is not None and expect != ObjType.CHUNK and kind != expect:
            raise FormatError(f"object {oid} is a {kind.name.lower()}, "
                              f"expected a {expect.name.lower()}")
        return raw

    def read_head(self, oid: ObjectId) -> bytes:
        return self._get(object_relpath(oid), MAX_STORED_SIZE, None, _missing_object(oid),
                         ObjectCorrupt, first=HEADER_SIZE)

    def stored_size(self, oid: ObjectId) -> int | None:
        try:
            return self._get(object_relpath(oid), MAX_STORED_SIZE, None, _missing_object(oid),
                             ObjectCorrupt, method="HEAD")
        except ObjectMissing:
            return None

    def read_decoded_many(self, oids: list[ObjectId]) -> dict[ObjectId, Any]:
        """Fetch many objects concurrently (bounded by ``parallel``): each value is
        (type, raw, stored), verified, or the CasError that object met."""
        async def one(oid: ObjectId) -> Any:
            try:
                return await self.transport.get(object_relpath(oid), MAX_STORED_SIZE,
                                                _object_check(oid), bound=object_bound)
            except Fail as f:
                return as_error(f, _missing_object(oid), ObjectCorrupt)

        async def all_of() -> list[Any]:
            return await asyncio.gather(*(one(o) for o in oids))

        rounds = 1 + len(oids) // self.settings.parallel
        got = self.transport.run(all_of(), self.transport.call_deadline() * rounds)
        return dict(zip(oids, got, strict=True))

    # -- small files ---------------------------------------------------------------
    def read_ref(self, name: str) -> ObjectId:
        return self._get(ref_relpath(name), MAX_REF, _parse_ref,
                         lambda m: NotFound(f"no ref named {name!r} ({m})"), FormatError)

    def read_format(self) -> bytes | None:
        try:
            return self._get(FORMAT_FILE, MAX_FORMAT_DOC, _json_check,
                             lambda m: NotFound(m), FormatError)
        except NotFound:
            return None

    def _check_format_once(self) -> None:
        """Refuse a store of a format version this reader does not know, as the local
        source does on opening; asked once, when releases are first listed (opening
        an HTTP source does no I/O, so an offline node can still open it)."""
        if self._format_checked:
            return
        check_format_doc(self.read_format(), self.urls[0].rstrip("/"))
        self._format_checked = True

    def release_names(self) -> list[str]:
        self._check_format_once()
        rel = names_index_relpath()
        try:
            return self._get(rel, MAX_RELEASE_INDEX,
                             lambda b: release_index.decode_names(b, f"release index {rel}"),
                             lambda m: NotFound(m), FormatError)
        except NotFound:
            return []  # no index (yet): an HTTP reader cannot list (FORMAT §6.4)

    def release_revisions(self, name: str) -> list[int]:
        self._check_format_once()
        rel = revisions_index_relpath(name)
        try:
            return self._get(rel, MAX_RELEASE_INDEX,
                             lambda b: release_index.decode_revisions(
                                 b, name, f"release index {rel}"),
                             lambda m: NotFound(m), FormatError)
        except NotFound:
            if name in self.release_names():
                return []  # the names index ran ahead of this name's own index
            raise NotFound(f"no release named {name!r}") from None

    def read_release(self, name: str, revision: int) -> bytes:
        if type(revision) is not int or revision < 1:
            raise NotFound(f"release {name} has no revision {revision!r}")
        return self._get(release_relpath(name, revision), MAX_RELEASE_DOC, _release_check,
                         lambda m: NotFound(f"release {name} revision {revision} does not "
                                            "exist"), FormatError)


def object_bound(head: bytes) -> int:
    """The most stored bytes an object whose header is ``head`` can have: the raw size
    it claims plus zstd's worst-case growth.  Applied as soon as 16 bytes arrived, so
    a body that never ends is cut at about the object's own size, not at the format's
    256 MiB limit (the header is not trusted for anything else: the hash decides)."""
    try:
        magic, _kind, codec, _res, size = HEADER.unpack_from(head)
    except struct.error:
        return MAX_STORED_SIZE
    if magic != MAGIC or size > MAX_RAW_SIZE:
        return HEADER_SIZE  # not an object: the decode check will say so
    if codec == 0:
        return HEADER_SIZE + size
    return HEADER_SIZE + size + (size >> 7) + (1 << 17)


# -- checks run on each server's answer (a failing one means: try the next server) --
def _object_check(oid: ObjectId) -> Callable[[bytes], tuple[ObjType, bytes, bytes]]:
    def check(stored: bytes) -> tuple[ObjType, bytes, bytes]:
        kind, raw = decode(oid, stored)
        return kind, raw, stored
    return check


def _missing_object(oid: ObjectId) -> Callable[[str], CasError]:
    return lambda m: ObjectMissing(f"object {oid} is missing from every server ({m})")


def _parse_ref(data: bytes) -> ObjectId:
    try:
        return ObjectId.parse(data.decode("ascii").strip())
    except (UnicodeDecodeError, FormatError):
        raise FormatError("ref is damaged (not an object id)") from None


def _json_check(data: bytes) -> bytes:
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError("not valid JSON") from None
    return data


def _release_check(data: bytes) -> bytes:
    """Shape only (the signature is checked by the caller, against its trusted keys):
    a server that answers garbage is skipped for the next one."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError("release document is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != "casstore-release":
        raise FormatError("not a casstore release document")
    return data
