"""Moving a release between a local store and ``cas serve``: push and pull.

Both move only the objects the other side lacks, several at a time, and write the
release document last, so an interrupted transfer leaves nothing half-visible
and the next run skips what already arrived (objects are content-addressed and
written atomically, so "there" means "complete").

* **push**: walk the local release's trees, ask the server which ids it lacks
  (``POST objects/missing``, batched), PUT those, then PUT the release document.
  The server verifies every object and the release (docs/HTTP.md).
* **pull**: read the remote release document, verify it against the local trusted
  keys, walk the trees *from the remote* (every object verified against its id,
  and trees and blobs against their type, before it is used or written), store
  the missing objects, then write the release (document, then index).

"Present" on a local store means :func:`verified_present`: the index holds a
verified marker that still matches the file (FORMAT §8), so a damaged or
foreign file is fetched or uploaded again, and repaired by ``put_raw``.

Every request goes through the one HTTP client,
:class:`~casstore.sources.transport.Transport`, with the caller's
:class:`~casstore.sources.transport.HTTPSettings` (the CLI builds them from the client
config: proxies, timeouts, retries; ``--jobs`` sets ``parallel``).  The one remote
read is :func:`get_file` (a GET of a FORMAT §10.2 path, its body bounded as the
HTTP object source bounds it).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from casstore.errors import (
    BadSignature,
    CasError,
    NotFound,
    ObjectCorrupt,
    PushRefused,
    TokenError,
    TransferError,
)
from casstore.format import release_index
from casstore.format.layout import (
    MAX_BATCH,
    MAX_RELEASE_DOC,
    MAX_RELEASE_INDEX,
    MAX_STORED_SIZE,
    object_relpath,
    release_relpath,
    revisions_index_relpath,
)
from casstore.format.objects import ObjectId, ObjType, decode
from casstore.releases.release import Release, load_unverified, verify
from casstore.sources.http import object_bound
from casstore.sources.transport import MISSING, Fail, HTTPSettings, Transport, as_error
from casstore.store.progress import Progress, no_progress
from casstore.store.reachable import Node, reachable_ids, roots, walk_async
from casstore.store.writable import Store


@dataclass
class TransferStats:
    """What a push or pull did (printed by the CLI, checked by the tests)."""

    name: str
    revision: int
    objects: int = 0  # reachable from the release
    moved: int = 0  # objects sent (push) or fetched (pull)
    bytes: int = 0  # stored bytes moved
    release_written: bool = False  # False: the other side had this exact revision
    missing_ids: list[str] = field(default_factory=list, repr=False)


def tops(rel: Release) -> list[Node]:
    """Where a release's walk starts: its root and variant trees."""
    return roots((f"{rel.name}@{rel.revision} {what}", oid) for what, oid in rel.trees().items())


def local_reachable(store: Store, rel: Release) -> list[ObjectId]:
    """Every object a local release reaches (trees and blobs read and verified)."""
    return reachable_ids(tops(rel), store.fetch)


# -- HTTP ------------------------------------------------------------------------------
_RETRY = "temporary; run again to resume"


def _transfer_error(f: Fail) -> CasError:
    return as_error(f, TransferError, ObjectCorrupt, retry=_RETRY)


async def get_file(http: Transport, relpath: str, limit: int) -> bytes | None:
    """The one remote read: a file of the store layout (FORMAT §10.2), None when every
    server says it is not there.  Unverified: callers check every byte (hash or
    signature) before using it."""
    bound = object_bound if relpath.startswith("objects/") else None
    try:
        return await http.get(relpath, limit, bound=bound)
    except Fail as f:
        if f.kind == MISSING:
            return None
        raise _transfer_error(f) from None


async def _send(http: Transport, method: str, relpath: str, limit: int,
                **kw: Any) -> tuple[int, bytes]:
    """(status, body of at most ``limit`` bytes) of a write; temporary failures are
    retried by the transport, and raised as RemoteError once it gives up."""
    try:
        return await http.send(method, relpath, limit, **kw)
    except Fail as f:
        raise _transfer_error(f) from None


def _server_says(body: bytes) -> str:
    return body.decode("utf-8", "replace").strip()[:300]


# -- push ------------------------------------------------------------------------------
async def _missing(http: Transport, auth: dict[str, str],
                   oids: list[ObjectId]) -> list[ObjectId]:
    out: list[ObjectId] = []
    for i in range(0, len(oids), MAX_BATCH):
        batch = oids[i:i + MAX_BATCH]
        status, body = await _send(http, "POST", "objects/missing", 1 << 20, headers=auth,
                                   json={"ids": [str(o) for o in batch]})
        _check_auth(status, body)
        if status != 200:
            raise TransferError(f"the server cannot say which objects it lacks: HTTP "
                                f"{status} {_server_says(body)}")
        try:
            wanted = {o.digest for o in batch}
            got = [ObjectId.parse(x) for x in json.loads(body)["missing"]]
            if any(o.digest not in wanted for o in got):
                raise ValueError
        except (ValueError, KeyError, TypeError, CasError):
            raise TransferError("the server's answer to 'which objects do you lack' is "
                                "malformed") from None
        out.extend(got)
    return out


def _check_auth(status: int, body: bytes) -> None:
    if status == 401:
        raise TokenError(f"the server refused the token: {_server_says(body)}")


async def _push(store: Store, http: Transport, rel: Release, doc: bytes, token: str,
                progress: Progress, pool: ThreadPoolExecutor) -> TransferStats:
    loop = asyncio.get_running_loop()
    stats = TransferStats(rel.name, rel.revision)
    oids = await loop.run_in_executor(pool, local_reachable, store, rel)
    stats.objects = len(oids)
    auth = {"Authorization": f"Bearer {token}"}
    missing = await _missing(http, auth, oids)
    stats.missing_ids = [str(o) for o in missing]
    queue: asyncio.Queue[ObjectId] = asyncio.Queue()
    for oid in missing:
        queue.put_nowait(oid)

    async def worker() -> None:
        while True:
            try:
                oid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            stored = await loop.run_in_executor(pool, store.read_stored, oid)
            status, body = await _send(http, "PUT", object_relpath(oid), 1 << 16,
                                       headers=auth, data=stored)
            _check_auth(status, body)
            if status not in (200, 201):
                raise TransferError(f"the server refused object {oid}: HTTP {status} "
                                    f"{_server_says(body)}")
            stats.moved += 1
            stats.bytes += len(stored)
            progress(len(stored))

    jobs = http.settings.parallel
    await _gather([worker() for _ in range(max(1, min(jobs, len(missing))))])
    status, body = await _send(http, "PUT", release_relpath(rel.name, rel.revision), 1 << 16,
                               headers=auth, data=doc)
    _check_auth(status, body)
    if status in (400, 403, 409, 422):
        raise PushRefused(f"the server refused {rel.name}@{rel.revision}: HTTP {status} "
                          f"{_server_says(body)}")
    if status not in (200, 201):
        raise TransferError(f"cannot store {rel.name}@{rel.revision}: HTTP {status} "
                            f"{_server_says(body)}")
    stats.release_written = status == 201
    return stats


async def _gather(coros: list) -> None:
    """Run workers; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def push(store: Store, url: str, name: str, revision: int | None, token: str, *,
         settings: HTTPSettings | None = None,
         progress: Progress | None = None) -> TransferStats:
    """Push release ``name`` (newest, or ``revision``) to a ``cas serve`` at ``url``,
    ``settings.parallel`` objects at a time."""
    if not token:
        raise TokenError("pushing needs a write token (cas serve token add NAME on the server)")
    rel = load_unverified(store, name, revision)  # the server verifies it
    doc = store.read_release(name, rel.revision)
    http = Transport([url], settings)
    try:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cas-push") as pool:
            return http.run(_push(store, http, rel, doc, token, progress or no_progress, pool),
                            math.inf)
    finally:
        http.close()


# -- pull ------------------------------------------------------------------------------
async def _remote_release(http: Transport, base: str, name: str,
                          revision: int | None) -> tuple[int, bytes]:
    if revision is not None:
        doc = await get_file(http, release_relpath(name, revision), MAX_RELEASE_DOC)
        if doc is None:
            raise NotFound(f"{base} has no release {name}@{revision}")
        return revision, doc
    data = await get_file(http, revisions_index_relpath(name), MAX_RELEASE_INDEX)
    if data is None:
        raise NotFound(f"{base} has no release named {name!r}")
    for rev in reversed(release_index.decode_revisions(data, name, f"{base} release index")):
        doc = await get_file(http, release_relpath(name, rev), MAX_RELEASE_DOC)
        if doc is not None:  # an index that runs ahead: skip (FORMAT §6.4)
            return rev, doc
    raise NotFound(f"{base}: release {name!r} has no revision with a document")


def _store_fetched(store: Store, oid: ObjectId, stored: bytes,
                   expect: ObjType) -> tuple[ObjType, bytes]:
    """Verify remote bytes (hash, and type for a tree or blob), then store them."""
    kind, raw = decode(oid, stored, expect)
    store.put_raw(kind, raw, oid)
    return kind, raw


async def _pull(store: Store, http: Transport, name: str, revision: int | None,
                trusted: list[str], progress: Progress,
                pool: ThreadPoolExecutor) -> TransferStats:
    loop = asyncio.get_running_loop()
    base = http.urls[0].rstrip("/")
    rev, doc = await _remote_release(http, base, name, revision)
    rel = verify(doc, trusted)
    if rel.name != name or rel.revision != rev:
        raise BadSignature(f"{base}: the document of {name}@{rev} is {rel.name}@"
                           f"{rel.revision} (replayed under a wrong name)")
    stats = TransferStats(name, rev)
    try:
        local = store.read_release(name, rev)
    except NotFound:
        local = None
    if local is not None:
        if local != doc:
            raise TransferError(f"the local store has another {name}@{rev}")
        stats.objects = len(await loop.run_in_executor(pool, local_reachable, store, rel))
        return stats

    async def one(node: Node) -> Sequence[Node]:
        oid, kind = node.oid, node.kind
        if await loop.run_in_executor(pool, store.verified_present, oid):
            if kind == ObjType.CHUNK:
                return ()
            return node.expand(await loop.run_in_executor(pool, store.fetch, oid, kind))
        stored = await get_file(http, object_relpath(oid), MAX_STORED_SIZE)
        if stored is None:
            raise TransferError(f"{base} lacks object {oid} of {name}@{rev}")
        got, raw = await loop.run_in_executor(pool, _store_fetched, store, oid, stored, kind)
        stats.moved += 1
        stats.bytes += len(stored)
        progress(len(stored))
        return node.expand(raw, got) if kind != ObjType.CHUNK else ()

    with store.lock():
        stats.objects = await walk_async(tops(rel), one, jobs=http.settings.parallel)
        await loop.run_in_executor(pool, store.write_release, name, rev, doc)
    stats.release_written = True
    return stats


def pull(store: Store, url: str, name: str, revision: int | None, trusted: list[str], *,
         settings: HTTPSettings | None = None,
         progress: Progress | None = None) -> TransferStats:
    """Pull release ``name`` (newest, or ``revision``) from ``url`` into ``store``,
    verified against ``trusted`` keys, ``settings.parallel`` objects at a time."""
    if not trusted:
        raise TransferError("pulling needs trusted keys (--trusted-key, or trusted_keys in "
                            "the client config)")
    http = Transport([url], settings)
    try:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cas-pull") as pool:
            return http.run(_pull(store, http, name, revision, trusted, progress or no_progress,
                                  pool), math.inf)
    finally:
        http.close()


__all__ = ["TransferStats", "get_file", "local_reachable", "pull",
           "push"]
