"""The store layout over HTTP (docs/FORMAT.md §10.2) and push writes (docs/HTTP.md).

Reads: ``objects/xx/62hex``, ``releases/_index.json``, ``releases/NAME/_index.json``,
``releases/NAME/REV.release``, ``refs/NAME`` and ``casstore.json``, GET and HEAD,
so that a client cannot tell ``cas serve`` from nginx serving the folder.  Objects
are sent with ``sendfile`` from a file opened ``O_NOFOLLOW | O_NONBLOCK`` and
checked with ``fstat`` (regular, within the size limit); Range and
If-None-Match are answered here, not by aiohttp's FileResponse (which opens the
path itself, following symlinks, and looks for ``.gz`` siblings).

Writes (bearer token): a batch "which of these do you lack", PUT of an object
(verified against its id before it is stored through :meth:`Store.put_raw`), and
PUT of a release (verified against the server's trusted keys, newer than the
current revision, complete, then written document first and index last).

Every path parameter is matched against a strict pattern and turned into a value
(an ObjectId, a checked name, an int); file paths are built from those values
only, never from request text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
from aiohttp import hdrs, web

from casstore.errors import (
    CasError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    ReleaseError,
    StoreError,
    TokenError,
    UntrustedKey,
    UsageError,
)
from casstore.fileio.safeio import OPEN_FLAGS, read_regular
from casstore.format.layout import (
    FORMAT_FILE,
    MAX_BATCH,
    MAX_FORMAT_DOC,
    MAX_REF,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    names_index_relpath,
    ref_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjectId, decode
from casstore.releases.release import verify
from casstore.server.metrics import METRICS
from casstore.server.tokens import TokenFile, default_path
from casstore.store.publish import check_publishable
from casstore.store.writable import Store

log = logging.getLogger(__name__)
IMMUTABLE = "public, max-age=31536000, immutable"
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_HEX62 = re.compile(r"^[0-9a-f]{62}$")
_REV_FILE = re.compile(r"^([0-9]{12})\.release$")
_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")
UNSATISFIABLE = (-1, -1)
SENDFILE_MIN = 256 << 10  # smaller objects are read and written, bigger ones sendfile-d


@dataclass
class StoreConfig:
    """What the store part of ``cas serve`` needs."""

    store: Path
    trusted_keys: list[str]  # release uploads need them; none: release PUT gives 403
    tokens: Path | None = None  # default: <store>/server/tokens.json
    max_age: int = 60  # release documents and refs (index files: no-cache)
    format_max_age: int = 3600  # casstore.json
    max_object: int = MAX_STORED_SIZE
    upload_workers: int = 4


class StoreService:
    """The model behind the routes; blocking work runs on its thread pool."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.store)
        self.tokens = TokenFile(cfg.tokens or default_path(self.root))
        self.pool = ThreadPoolExecutor(max_workers=cfg.upload_workers,
                                       thread_name_prefix="cas-store")
        self._store: Store | None = None
        self._open_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}

    @property
    def store(self) -> Store:
        """The writable store, opened on the first write (reads never need LMDB)."""
        with self._open_lock:
            if self._store is None:
                self._store = Store.open(self.root)
            return self._store

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    # -- writes (blocking) -----------------------------------------------------------
    def missing(self, oids: list[ObjectId]) -> list[ObjectId]:
        store = self.store
        return [o for o in oids if not store.verified_present(o)]

    def put_object(self, oid: ObjectId, stored: bytes) -> bool:
        """Verify and store; True if it was written, False if a good copy was there."""
        kind, raw = decode(oid, stored)  # ObjectCorrupt: bytes do not match the id
        store = self.store
        if store.verified_present(oid):
            return False
        with store.lock():
            store.put_raw(kind, raw, oid)
        return True

    def put_release(self, name: str, revision: int, doc: bytes) -> bool:
        """Accept a release document; True if written, False if the same one was there."""
        if not self.cfg.trusted_keys:
            raise _Refused(403, "this server has no trusted keys: release uploads are off")
        try:
            rel = verify(doc, self.cfg.trusted_keys)
        except UntrustedKey as exc:
            raise _Refused(403, str(exc)) from None
        except (ReleaseError, ObjectCorrupt) as exc:  # unsigned, bad signature, malformed
            raise _Refused(400, str(exc)) from None
        if rel.name != name or rel.revision != revision:
            raise _Refused(400, f"the document is {rel.name} revision {rel.revision}, "
                                f"not {name} revision {revision}")
        lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            store = self.store
            try:
                revs = store.release_revisions(name)
            except NotFound:
                revs = []
            if revision in revs:
                if store.read_release(name, revision) == doc:
                    return False
                raise _Refused(409, f"{name} revision {revision} exists with other content")
            if revs and revision < revs[-1]:
                raise _Refused(409, f"{name} revision {revision} is not newer than "
                                    f"revision {revs[-1]}")
            try:
                check_publishable(store, rel)
            except ObjectMissing as exc:
                raise _Refused(422, f"incomplete release: {exc}") from None
            except ObjectCorrupt as exc:
                raise _Refused(422, f"a stored object is damaged: {exc}") from None
            except UsageError as exc:
                raise _Refused(400, str(exc)) from None
            try:
                store.write_release(name, revision, doc)
            except StoreError as exc:
                if "already exists" in str(exc):
                    raise _Refused(409, str(exc)) from None
                raise
        log.info("accepted release %s@%d", name, revision)
        return True


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


STORE: web.AppKey[StoreService] = web.AppKey("store", StoreService)


# -- helpers ---------------------------------------------------------------------------
def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n",
                        headers={"Cache-Control": "no-store", **headers})


class BadRequest(Exception):
    """A malformed path parameter: 400, whatever it decodes to."""


def parse_oid(xx: str, rest: str) -> ObjectId:
    if not (_HEX2.match(xx) and _HEX62.match(rest)):
        raise BadRequest("malformed object path (objects/<2 hex>/<62 hex>, lower case)")
    return ObjectId(bytes.fromhex(xx + rest))


def parse_name(name: str) -> str:
    try:
        return check_ref_name(name)
    except StoreError:
        raise BadRequest("malformed name") from None


def parse_revision_file(text: str) -> int:
    m = _REV_FILE.match(text)
    if not m or int(m.group(1)) < 1:
        raise BadRequest("malformed release file name (12 digits, then .release)")
    return int(m.group(1))


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, count) for a single-range ``Range`` header, UNSATISFIABLE, or None to
    send the whole object (no header, several ranges, or a header we do not parse:
    RFC 9110 lets a server ignore Range)."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if not m or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        n = min(n, size)
        return size - n, n
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored
    if start >= size:
        return UNSATISFIABLE
    end = min(end, size - 1)
    return start, end - start + 1


def etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == etag:
            return True
    return False


class _FileSlice(web.FileResponse):
    """Sends ``count`` bytes at ``offset`` of an already opened, checked file
    (with sendfile when aiohttp can), and remembers how many it sent."""

    def __init__(self, fobj, offset: int, count: int, status: int,
                 headers: dict[str, str]) -> None:
        super().__init__(os.devnull, status=status, headers=headers)
        self._fobj, self._offset, self._count = fobj, offset, count
        self.cas_bytes = 0

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        try:
            self.content_length = self._count
            if self._count == 0 or request.method == hdrs.METH_HEAD:
                return await web.StreamResponse.prepare(self, request)
            writer = await self._sendfile(request, self._fobj, self._offset, self._count)
            self.cas_bytes = self._count
            return writer
        finally:
            self._fobj.close()

    async def _sendfile_fallback(self, writer, fobj, offset: int, count: int):
        """No native sendfile (uvloop): pread from the page cache in the loop, 1 MiB at
        a time (aiohttp's own fallback hops to a thread for every 256 KiB)."""
        fd = fobj.fileno()
        while count > 0:
            chunk = os.pread(fd, min(count, 1 << 20), offset)
            if not chunk:  # the file shrank: never send a short body as if complete
                raise ConnectionResetError("object file shrank while sent")
            await writer.write(chunk)
            offset += len(chunk)
            count -= len(chunk)
        await writer.drain()
        return writer


def _open_object(root: Path, oid: ObjectId, limit: int) -> tuple[int, int] | None:
    """(fd, size) of a regular object file within ``limit``, None if absent.
    Raises ObjectCorrupt for a symlink, FIFO, folder or oversized file."""
    h = oid.hex  # the path is made of the parsed id only
    try:
        fd = os.open(f"{root}/objects/{h[:2]}/{h[2:]}", OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ObjectCorrupt(f"object {oid} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise ObjectCorrupt(f"object {oid} is not a regular file within the size limit")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


# -- read routes -----------------------------------------------------------------------
async def get_object(request: web.Request) -> web.StreamResponse:
    try:
        oid = parse_oid(request.match_info["xx"], request.match_info["rest"])
    except BadRequest as exc:
        return _text(400, str(exc))
    svc: StoreService = request.app[STORE]
    try:
        opened = _open_object(svc.root, oid, MAX_STORED_SIZE)
    except ObjectCorrupt as exc:
        log.error("not serving %s", exc)
        return _text(500, "object damaged on the server")
    if opened is None:
        return _text(404, "no such object", **{"Cache-Control": "public, max-age=10"})
    fd, size = opened
    return _object_response(request, oid, fd, size)


def _object_response(request: web.Request, oid: ObjectId, fd: int,
                     size: int) -> web.StreamResponse:
    """The answer for an opened object file; takes ownership of ``fd``."""
    etag = f'"{oid}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    req_headers = request.headers
    if etag_matches(req_headers.get(hdrs.IF_NONE_MATCH), etag):
        os.close(fd)
        return web.Response(status=304, headers=headers)
    rng = None
    if_range = req_headers.get(hdrs.IF_RANGE)
    if if_range is None or if_range.strip() == etag:
        rng = byte_range(req_headers.get(hdrs.RANGE), size)
    if rng == UNSATISFIABLE:
        os.close(fd)
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, offset, count = 200, 0, size
    if rng is not None:
        status, (offset, count) = 206, rng
        headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    if count > SENDFILE_MIN or request.method == hdrs.METH_HEAD:
        return _FileSlice(os.fdopen(fd, "rb"), offset, count, status, headers)
    # Small: one pread from the page cache beats sendfile's extra loop round trips.
    try:
        body = os.pread(fd, count, offset)
    finally:
        os.close(fd)
    if len(body) != count:
        return _text(500, "object changed while read")
    return web.Response(body=body, status=status, headers=headers)


REVALIDATE = -1  # a max_age meaning "public, no-cache": store, but ask before each use


def _cache_control(max_age: int) -> str:
    return "public, no-cache" if max_age == REVALIDATE else f"public, max-age={max_age}"


def _small_file(request: web.Request, relpath: str, limit: int, max_age: int,
                content_type: str) -> web.Response:
    """A small layout file with an ETag; ``max_age`` :data:`REVALIDATE` for the release
    index files, which decide what a mount picks and so must never be served stale by
    a proxy (FORMAT §10.2)."""
    svc: StoreService = request.app[STORE]
    try:
        data = read_regular(svc.root / relpath, limit, relpath, corrupt=ObjectCorrupt)
    except CasError as exc:
        log.error("not serving %s: %s", relpath, exc)
        return _text(500, "file damaged on the server")
    if data is None:
        return _text(404, "not found", **{"Cache-Control": _cache_control(min(max_age, 10))})
    etag = f'"{blake3.blake3(data).hexdigest()[:32]}"'
    headers = {"Cache-Control": _cache_control(max_age), "ETag": etag}
    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type=content_type, headers=headers)


async def get_names_index(request: web.Request) -> web.StreamResponse:
    return _small_file(request, names_index_relpath(), MAX_RELEASE_INDEX, REVALIDATE,
                       "application/json")


async def get_release_file(request: web.Request) -> web.StreamResponse:
    try:
        name = parse_name(request.match_info["name"])
        file = request.match_info["file"]
        if file == "_index.json":
            return _small_file(request, revisions_index_relpath(name), MAX_RELEASE_INDEX,
                               REVALIDATE, "application/json")
        rev = parse_revision_file(file)
    except BadRequest as exc:
        return _text(400, str(exc))
    return _small_file(request, release_relpath(name, rev), MAX_RELEASE_DOC,
                       request.app[STORE].cfg.max_age, "application/json")


async def get_ref(request: web.Request) -> web.StreamResponse:
    try:
        name = parse_name(request.match_info["name"])
    except BadRequest as exc:
        return _text(400, str(exc))
    return _small_file(request, ref_relpath(name), MAX_REF, request.app[STORE].cfg.max_age,
                       "text/plain")


async def get_format(request: web.Request) -> web.StreamResponse:
    return _small_file(request, FORMAT_FILE, MAX_FORMAT_DOC,
                       request.app[STORE].cfg.format_max_age, "application/json")


# -- write routes ----------------------------------------------------------------------
def _authorize(request: web.Request) -> web.Response | None:
    """None if the request carries a valid token, else the 401 (or 500) to answer."""
    svc: StoreService = request.app[STORE]
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    try:
        who = svc.tokens.check(token.strip()) if scheme.lower() == "bearer" else None
    except TokenError as exc:
        log.error("%s", exc)
        return _text(500, "the server's token file is damaged")
    if who is None:
        return _text(401, "a valid bearer token is needed to write",
                     **{"WWW-Authenticate": 'Bearer realm="cas serve"'})
    return None


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    length = request.content_length
    if length is not None and length > limit:
        return _text(413, f"body too large (limit {limit} bytes)")
    buf = bytearray()
    while chunk := await request.content.readany():
        buf += chunk
        if len(buf) > limit:
            return _text(413, f"body too large (limit {limit} bytes)")
    return bytes(buf)


async def post_missing(request: web.Request) -> web.Response:
    if (denied := _authorize(request)) is not None:
        return denied
    body = await _read_body(request, 1 << 20)
    if isinstance(body, web.Response):
        return body
    try:
        ids = json.loads(body)["ids"]
        if not isinstance(ids, list) or len(ids) > MAX_BATCH:
            raise ValueError
        oids = [ObjectId.parse(x) for x in ids]
    except (ValueError, KeyError, TypeError, CasError):
        return _text(400, f'body must be {{"ids": [up to {MAX_BATCH} object ids]}}')
    svc: StoreService = request.app[STORE]
    try:
        missing = await asyncio.get_running_loop().run_in_executor(svc.pool, svc.missing, oids)
    except CasError as exc:
        log.error("missing-objects query failed: %s", exc)
        return _text(500, "cannot read the store's index")
    return web.json_response({"missing": [str(o) for o in missing]},
                             headers={"Cache-Control": "no-store"})


async def put_object(request: web.Request) -> web.Response:
    try:
        oid = parse_oid(request.match_info["xx"], request.match_info["rest"])
    except BadRequest as exc:
        return _text(400, str(exc))
    if (denied := _authorize(request)) is not None:
        return denied
    svc: StoreService = request.app[STORE]
    body = await _read_body(request, svc.cfg.max_object)
    if isinstance(body, web.Response):
        return body
    try:
        written = await asyncio.get_running_loop().run_in_executor(
            svc.pool, svc.put_object, oid, body)
    except ObjectCorrupt as exc:
        return _text(400, f"refused: {exc}")
    except CasError as exc:
        log.error("cannot store object %s: %s", oid, exc)
        return _text(507 if exc.exit_code == 9 else 500, "cannot store the object")
    if written:
        metrics = request.app[METRICS]
        metrics.uploaded.inc()
        metrics.uploaded_bytes.inc(len(body))
        return _text(201, "stored")
    return _text(200, "already present")


async def put_release(request: web.Request) -> web.Response:
    try:
        name = parse_name(request.match_info["name"])
        rev = parse_revision_file(request.match_info["file"])
    except BadRequest as exc:
        return _text(400, str(exc))
    if (denied := _authorize(request)) is not None:
        return denied
    body = await _read_body(request, MAX_RELEASE_DOC)
    if isinstance(body, web.Response):
        return body
    svc: StoreService = request.app[STORE]
    try:
        written = await asyncio.get_running_loop().run_in_executor(
            svc.pool, svc.put_release, name, rev, body)
    except _Refused as exc:
        log.warning("refused release %s@%d: %s", name, rev, exc)
        return _text(exc.status, f"refused: {exc}")
    except CasError as exc:
        log.error("cannot store release %s@%d: %s", name, rev, exc)
        return _text(500, "cannot store the release")
    if written:
        request.app[METRICS].releases.inc()
        return _text(201, "release stored")
    return _text(200, "this release is already here")


def add_store_routes(app: web.Application, cfg: StoreConfig) -> StoreService:
    """Attach the store layout (reads) and push (writes) to an app."""
    svc = StoreService(cfg)
    app[STORE] = svc

    async def cleanup(_app: web.Application) -> None:
        svc.close()

    app.on_cleanup.append(cleanup)
    r = app.router
    r.add_get("/objects/{xx}/{rest}", get_object)
    r.add_put("/objects/{xx}/{rest}", put_object)
    r.add_post("/objects/missing", post_missing)
    r.add_get("/releases/_index.json", get_names_index)
    r.add_get("/releases/{name}/{file}", get_release_file)
    r.add_put("/releases/{name}/{file}", put_release)
    r.add_get("/refs/{name}", get_ref)
    r.add_get("/" + FORMAT_FILE, get_format)
    return svc
