"""Julia's Pkg server protocol over signed registry releases (docs/HTTP.md).

Routes: ``/registries``, ``/registry/{uuid}/{hash}``, ``/package/{uuid}/{hash}`` and
``/artifact/{hash}``, GET and HEAD.  What may be served comes only from registry
releases whose signature verifies against the server's trusted keys: every
revision ever published stays servable by hash (a client may hold any registry
hash it has seen), while ``/registries`` names the newest unexpired revision.
Path parameters are matched against strict patterns and used only as lookup
keys, never as file names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from casstore.errors import CasError, NotFound, ObjectCorrupt, ObjectMissing, TreeHashMismatch
from casstore.format.objects import ObjectId
from casstore.pkg.content import RegistryContent
from casstore.pkg.gittree import SHA1_RE, UUID_RE
from casstore.releases.release import verify
from casstore.server.filesend import file_response
from casstore.server.httpcache import IMMUTABLE
from casstore.server.metrics import METRICS
from casstore.server.params import params
from casstore.server.tarcache import Event, TarballCache
from casstore.sources.knownbad import KnownBad
from casstore.sources.local import LocalSource
from casstore.view.reader import TreeReader

log = logging.getLogger(__name__)
SHORT = "public, max-age=30"
REGISTRY_PREFIX = "registry-"
MAX_REMEMBERED = 100_000


@dataclass
class PkgConfig:
    """What the Pkg protocol part of ``cas serve`` needs."""

    store: Path
    trusted_keys: list[str]
    cache_dir: Path
    cache_size: int = 2 << 30
    registries: list[str] | None = None  # release names; None: every registry-* release
    refresh_s: float = 2.0
    check_tree_hash: bool = True  # off only in tests, to show that Pkg's own check fires
    build_workers: int = 2
    build_timeout: float = 300.0  # a request waits this long for a tarball, then 503


@dataclass
class _Loaded:
    content: RegistryContent
    expires: int


@dataclass
class PkgService:
    """The model behind the routes: registry releases loaded, tarballs cached."""

    cfg: PkgConfig
    event: Event | None = None
    loaded: dict[tuple[str, int], _Loaded] = field(default_factory=dict)
    refused: set[tuple[str, int]] = field(default_factory=set)
    mismatched: set[tuple[str, str]] = field(default_factory=set)  # (tree hex, sha1)

    def __post_init__(self) -> None:
        self.source = KnownBad(LocalSource(self.cfg.store))
        self.reader = TreeReader(self.source)
        self.cache = TarballCache(self.cfg.cache_dir, self.cfg.cache_size, self.event)
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.build_workers,
                                       thread_name_prefix="cas-tar")
        self._refreshed = 0.0
        self._refresh_lock = asyncio.Lock()
        self._builds: dict[tuple[str, str], asyncio.Future] = {}
        self.found: dict[tuple[str, str, str], ObjectId] = {}  # (kind, uuid, sha1) -> tree

    def remember(self, kind: str, uuid: str, sha1: str, tree: ObjectId) -> None:
        """Remember a lookup: verified revisions are only ever added, so a hash found
        once keeps its tree (bounded: forgotten wholesale when it grows too big)."""
        if len(self.found) >= MAX_REMEMBERED:
            self.found = {}
        self.found[(kind, uuid, sha1)] = tree

    async def build(self, tree: ObjectId, sha1: str) -> None:
        """Make (or check) the cached tarball; one build per key however many wait, and
        each waiter gives up after ``build_timeout`` (the build itself carries on)."""
        key = (tree.hex, sha1)
        fut = self._builds.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = asyncio.ensure_future(loop.run_in_executor(self.pool, lambda: self.cache.get(
                self.reader, tree, sha1, check=self.cfg.check_tree_hash)))
            self._builds[key] = fut
            fut.add_done_callback(lambda f: self._built(key, f))
        await asyncio.wait_for(asyncio.shield(fut), self.cfg.build_timeout)

    def _built(self, key: tuple[str, str], fut: asyncio.Future) -> None:
        """Forget a finished build; its error was answered to whoever still waited (a
        build all waiters gave up on logs its error here, once)."""
        self._builds.pop(key, None)
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            log.debug("tarball build for %s ended: %s", key[1], exc)

    # -- releases ----------------------------------------------------------------
    def _names(self) -> list[str]:
        if self.cfg.registries is not None:
            return list(self.cfg.registries)
        return [n for n in self.source.release_names() if n.startswith(REGISTRY_PREFIX)]

    def load(self) -> None:
        """Verify and index revisions not seen yet (blocking; run in a thread).

        The index is replaced, never changed in place, so lookups running meanwhile
        on other threads always see a complete one.
        """
        found: dict[tuple[str, int], _Loaded] = {}
        for name in self._names():
            try:
                revs = self.source.release_revisions(name)
            except CasError as exc:
                log.error("registry release %s: %s", name, exc)
                continue
            for rev in revs:
                if (name, rev) in self.loaded or (name, rev) in self.refused:
                    continue
                try:
                    rel = verify(self.source.read_release(name, rev), self.cfg.trusted_keys,
                                 now=0)  # expiry matters for /registries only
                    if rel.name != name or rel.revision != rev:
                        raise CasError("document names another release (replayed)")
                    rc = RegistryContent.from_release(rel, self.reader)
                except CasError as exc:
                    log.error("refusing %s@%d: %s", name, rev, exc)
                    self.refused.add((name, rev))
                    continue
                found[(name, rev)] = _Loaded(rc, rel.expires)
                log.info("serving %s@%d: registry %s %s", name, rev, rc.uuid, rc.tree_sha1)
        if found:
            self.loaded = {**self.loaded, **found}

    async def refresh(self, force: bool = False) -> None:
        async with self._refresh_lock:
            if force or time.monotonic() - self._refreshed >= self.cfg.refresh_s:
                await asyncio.get_running_loop().run_in_executor(self.pool, self.load)
                self._refreshed = time.monotonic()

    def _newest_first(self) -> list[RegistryContent]:
        loaded = self.loaded
        return [v.content for _k, v in sorted(loaded.items(),
                                              key=lambda kv: (kv[0][0], -kv[0][1]))]

    def current(self) -> list[RegistryContent]:
        """The newest unexpired revision of each registry release, one per registry uuid."""
        out: dict[str, RegistryContent] = {}
        now = time.time()
        for (name, _rev), item in sorted(dict(self.loaded).items(), key=lambda kv: kv[0]):
            if item.expires < now:
                continue
            prev = out.get(item.content.uuid)
            if prev is not None and prev.release != name:
                log.warning("registry uuid %s is in both %s and %s; listing %s",
                            item.content.uuid, prev.release, name, prev.release)
                continue
            out[item.content.uuid] = item.content
        return sorted(out.values(), key=lambda rc: rc.release)

    def find(self, kind: str, uuid: str, sha1: str) -> ObjectId | None:
        """The store tree to serve for a request, from any verified revision."""
        for rc in self._newest_first():
            try:
                if kind == "registry":
                    if rc.uuid == uuid and rc.tree_sha1 == sha1:
                        return rc.registry_tree
                elif kind == "package":
                    return rc.package_tree(self.reader, uuid, sha1)
                else:
                    return rc.artifact_tree(self.reader, sha1)
            except NotFound:
                continue
        return None


PKG: web.AppKey[PkgService] = web.AppKey("pkg", PkgService)


# -- HTTP ------------------------------------------------------------------------
def _bad(text: str) -> web.Response:
    return web.Response(status=400, text=text + "\n", headers={"Cache-Control": "no-store"})


def _missing(text: str) -> web.Response:
    return web.Response(status=404, text=text + "\n", headers={"Cache-Control": "no-store"})


def _failed(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n",
                        headers={"Cache-Control": "no-store", **headers})


async def registries(request: web.Request) -> web.Response:
    svc: PkgService = request.app[PKG]
    await svc.refresh()
    body = "".join(f"/registry/{rc.uuid}/{rc.tree_sha1}\n" for rc in svc.current())
    return web.Response(text=body, content_type="text/plain",
                        headers={"Cache-Control": SHORT})


async def registry(request: web.Request) -> web.StreamResponse:
    return await _content(request, "registry", params(request)["uuid"],
                          params(request)["hash"])


async def package(request: web.Request) -> web.StreamResponse:
    return await _content(request, "package", params(request)["uuid"],
                          params(request)["hash"])


async def artifact(request: web.Request) -> web.StreamResponse:
    return await _content(request, "artifact", "", params(request)["hash"])


async def _content(request: web.Request, kind: str, uuid: str, sha1: str) -> web.StreamResponse:
    if kind != "artifact" and not UUID_RE.match(uuid):
        return _bad("malformed uuid (canonical lower-case form expected)")
    if not SHA1_RE.match(sha1):
        return _bad("malformed hash (40 lower-case hex digits expected)")
    svc: PkgService = request.app[PKG]
    tree = svc.found.get((kind, uuid, sha1))
    if tree is not None:  # the common case: served before, cached and checked
        opened = svc.cache.open_verified((tree.hex, sha1))
        if opened is not None:
            return _send(request, sha1, *opened)
    loop = asyncio.get_running_loop()
    try:
        tree = await loop.run_in_executor(None, svc.find, kind, uuid, sha1)
        if tree is None:
            await svc.refresh()  # a revision published a moment ago
            tree = await loop.run_in_executor(None, svc.find, kind, uuid, sha1)
    except CasError as exc:  # a map object damaged since the release was loaded
        log.error("cannot look up %s %s: %s", kind, sha1, exc)
        return _failed(500, "store object damaged or missing")
    if tree is None:
        return _missing(f"no {kind} with that hash here")
    key = (tree.hex, sha1)
    if key in svc.mismatched:  # content never changes: refuse again without rebuilding
        return _failed(500, "content does not match its hash")
    opened = svc.cache.open_verified(key)  # made and checked already (another request)
    if opened is not None:
        svc.remember(kind, uuid, sha1, tree)
        return _send(request, sha1, *opened)
    try:
        await svc.build(tree, sha1)
    except TimeoutError:
        log.error("making the tarball of %s %s takes over %.0f s; answering 503",
                  kind, sha1, svc.cfg.build_timeout)
        return _failed(503, "the tarball is not ready, retry later", **{"Retry-After": "10"})
    except TreeHashMismatch as exc:
        svc.mismatched.add(key)
        log.error("refusing %s %s: %s", kind, sha1, exc)
        return _failed(500, "content does not match its hash")
    except (ObjectCorrupt, ObjectMissing) as exc:
        log.error("cannot serve %s %s: store object damaged or missing: %s", kind, sha1, exc)
        return _failed(500, "store object damaged or missing")
    except CasError as exc:
        log.error("cannot make the tarball of %s %s: %s", kind, sha1, exc)
        return _failed(500, "cannot make the tarball")
    svc.remember(kind, uuid, sha1, tree)
    opened = svc.cache.open_verified(key, count=False)
    if opened is None:  # altered or evicted between the build and now
        return _failed(503, "busy, retry", **{"Retry-After": "1"})
    return _send(request, sha1, *opened)


def _send(request: web.Request, sha1: str, fd: int, st) -> web.StreamResponse:
    """The tarball, as an object is sent: validators, conditional requests, Range."""
    return file_response(request, fd, st, f'"{sha1}"',
                         {"Content-Type": "application/gzip", "Cache-Control": IMMUTABLE})


def add_pkg_routes(app: web.Application, cfg: PkgConfig) -> PkgService:
    """Attach the Pkg protocol to an app (after :func:`add_metrics`: it counts there)."""
    svc = PkgService(cfg, app[METRICS].tarball_event)
    app[PKG] = svc

    async def startup(_app: web.Application) -> None:
        await svc.refresh(force=True)
        if not svc.loaded:
            log.warning("no registry release verifies with the trusted keys yet")

    async def cleanup(_app: web.Application) -> None:
        svc.pool.shutdown(wait=False, cancel_futures=True)  # never wait on a stuck build

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/registries", registries)
    app.router.add_get("/registry/{uuid}/{hash}", registry)
    app.router.add_get("/package/{uuid}/{hash}", package)
    app.router.add_get("/artifact/{hash}", artifact)
    return svc
