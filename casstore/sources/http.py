"""A store served over HTTP(S): any static web server is a remote (FORMAT §10.2).

``HTTPSource(urls)`` reads the files of a store folder by their layout paths under
one or more base URLs (nginx, an S3 bucket, a CDN, ``cas serve``), with aiohttp's
client.  Why it looks the way it does:

* **A synchronous face over an event loop.**  The FUSE loop and the CLI are
  synchronous; the requests run on an asyncio loop in one helper thread per source
  (started on first use, and again after a ``fork``: a daemonising mount must not
  inherit a dead thread).  Every public method submits a coroutine and waits for
  it with an overall deadline, so no caller can hang however the server behaves.
  A semaphore bounds the requests in flight; identical concurrent requests share
  one HTTP request.
* **Fail-over, as CVMFS does it.**  Servers (and proxies, ``"DIRECT"`` meaning
  none) are tried in order, starting from the pair that last worked.  An answer
  is sorted into *missing* (404 and other refusals: ask the next server before
  concluding missing), *temporary* (timeout, connection error, 5xx: retry with a
  short backoff, then the next server) and *corrupt* (a hash mismatch, a body over
  its limit, a damaged document: the next server, and never use the bytes).  The
  conclusion across all servers: temporary beats corrupt beats missing, so an
  object is never remembered as bad while a server that might hold it was down.
* **Bounded and verified.**  Bodies are read in pieces and refused past the format
  limit (a body that never ends fails, it does not eat memory); connect, per-read
  and whole-request timeouts bound a silent server.  Every object is decoded and
  hashed against its id before it is returned, so a wrong byte never leaves here.
  Release documents and index files are only checked for shape (signatures are the
  caller's job) and are never cached here: the server is always asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from casstore.errors import (
    CasError,
    FormatError,
    NotFound,
    ObjectCorrupt,
    ObjectMissing,
    RemoteError,
    ServersUnreachable,
    UsageError,
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
from casstore.sources.counters import SourceCounters
from casstore.sources.local import check_format_doc

log = logging.getLogger(__name__)
# A library logs, the application decides where: the mount daemon logs to its file;
# the CLI prints one error line and must not also print the failures behind it.
log.addHandler(logging.NullHandler())

T = TypeVar("T")
DIRECT = "DIRECT"
MISSING, TEMPORARY, CORRUPT = "missing", "temporary", "corrupt"
UNREACHABLE = "unreachable"  # a conclusion: every server failed only temporarily
_PIECE = 1 << 20
USER_AGENT = "casstore-client/1"


@dataclass(frozen=True)
class HTTPSettings:
    """Timeouts, parallelism and proxies of an HTTP source (client config keys)."""

    connect_timeout: float = 5.0     # TCP (and proxy) connect
    read_timeout: float = 10.0       # longest silence while reading headers or body
    request_timeout: float = 120.0   # one whole request, body included
    parallel: int = 16               # requests in flight per source
    retries: int = 1                 # extra attempts per server on a temporary error
    backoff: float = 0.2             # seconds before the first retry (doubles)
    proxies: tuple[str, ...] = ()    # proxy URLs or "DIRECT"; () = the environment's
    deadline: float | None = None    # one synchronous call; None = derived from the above

    def call_deadline(self, servers: int) -> float:
        """Worst case of one call across every server, proxy and retry, plus slack:
        reached only if the per-request timeouts themselves fail to fire."""
        if self.deadline is not None:
            return self.deadline
        pairs = servers * max(1, len(self.proxies))
        per = (self.retries + 1) * (self.request_timeout + self.backoff * 4)
        return pairs * per + 30.0


def parse_proxies(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"http://p1:3128;http://p2:3128;DIRECT"`` or a list of those -> a checked tuple.

    As ``CVMFS_HTTP_PROXY``: ``;`` separates fail-over choices (``|`` is accepted too,
    tried in order, not load-balanced) and ``DIRECT`` means no proxy at all.
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"proxy must be a URL or DIRECT, not {item!r}")
        for part in item.replace("|", ";").split(";"):
            part = part.strip()
            if not part:
                continue
            if part.upper() == DIRECT:
                out.append(DIRECT)
                continue
            u = urlsplit(part)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise UsageError(f"proxy {part!r} is not an http://host:port URL or DIRECT")
            out.append(part)
    return tuple(out)


def check_base_url(url: str) -> str:
    """A base URL with exactly one trailing slash (layout paths are appended)."""
    if not isinstance(url, str):
        raise UsageError(f"a source URL must be a string, not {url!r}")
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"source {url!r} is not an http(s)://host/path URL")
    if u.query or u.fragment:
        raise UsageError(f"source {url!r}: a base URL takes no ?query or #fragment")
    return url.rstrip("/") + "/"


class _Fail(Exception):
    """One answer, sorted: ``kind`` is MISSING, TEMPORARY or CORRUPT."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind
        self.msg = msg


@dataclass
class HTTPStats:
    requests: int = 0
    bytes: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {MISSING: 0, TEMPORARY: 0,
                                                               CORRUPT: 0})
    merged: int = 0


class HTTPSource:
    """An :class:`~casstore.sources.base.ObjectSource` over base URLs, with fail-over."""

    def __init__(self, urls: str | Iterable[str], settings: HTTPSettings | None = None) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise UsageError("an HTTP source needs at least one URL")
        self.urls = [check_base_url(u) for u in urls]
        self.settings = settings or HTTPSettings()
        if self.settings.parallel < 1:
            raise UsageError("http parallel requests must be at least 1")
        self.proxies: tuple[str | None, ...] = tuple(
            None if p == DIRECT else p for p in self.settings.proxies) or ("env",)  # type: ignore
        self.stats = HTTPStats()
        # client metrics, one per server: bytes and objects fetched, errors, fail-overs
        self.source_counters = [SourceCounters(u.rstrip("/")) for u in self.urls]
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self._start = (0, 0)  # index of the server and proxy that last worked
        self._format_checked = False

    def __repr__(self) -> str:
        return f"HTTPSource({self.urls!r})"

    # -- the event loop thread ---------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise UsageError("HTTP source is closed")
            if self._loop is None or self._pid != os.getpid():
                # First use, or we are a forked child: the parent's thread is not here
                # (nor may its loop be stopped from here).
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self._sem: asyncio.Semaphore | None = None
                self._sessions: dict[bool, aiohttp.ClientSession] = {}
                self._inflight: dict[tuple, asyncio.Future] = {}
                self._thread = threading.Thread(target=self._loop.run_forever,
                                                name="casstore-http", daemon=True)
                self._thread.start()
                # Closes the sessions and stops the loop on close(), when the source is
                # garbage collected, or at exit, whichever comes first: a source its
                # user dropped (a CLI error path) leaves no "Unclosed client session".
                self._finalizer = weakref.finalize(self, _stop_loop, self._loop,
                                                   self._thread, self._sessions)
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for it, at most ``deadline`` s."""
        try:
            loop = self._ensure_loop()
        except BaseException:
            coro.close()  # never started: no "never awaited" warning
            raise
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        limit = deadline if deadline is not None else self.settings.call_deadline(len(self.urls))
        try:
            return fut.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ServersUnreachable(f"{self.urls[0]}: no answer within {limit:.0f} s "
                                     "(temporary; retry)") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fin = self._finalizer if self._pid == os.getpid() else None
        if fin is not None:
            fin()

    def suspend(self) -> None:
        """Stop the loop thread and its executor threads, but stay usable: the next
        request starts them again.

        ``cas mount`` calls this just before libfuse daemonises.  That fork happens
        in C, so Python never learns that the parent's threads are not in the child:
        at exit the daemon would wait for ever for the check threads of a verification
        done before the fork (``concurrent.futures`` joins its workers at exit)."""
        with self._lock:
            fin = self._finalizer if self._pid == os.getpid() else None
            self._loop = self._thread = self._finalizer = None
        if fin is not None:
            fin()

    # -- one request ---------------------------------------------------------------
    def _session(self, env: bool) -> aiohttp.ClientSession:
        """One session for "the environment's proxies" and one for explicit/no proxy."""
        s = self._sessions.get(env)
        if s is None:
            st = self.settings
            timeout = aiohttp.ClientTimeout(total=st.request_timeout, connect=st.connect_timeout,
                                            sock_connect=st.connect_timeout,
                                            sock_read=st.read_timeout)
            s = aiohttp.ClientSession(
                timeout=timeout, trust_env=env, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=st.parallel, limit_per_host=st.parallel),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            self._sessions[env] = s
        return s

    async def _once(self, base: str, proxy: str | None, rel: str, limit: int, *,
                    method: str = "GET", first: int | None = None) -> bytes | int:
        """One request: the body (at most ``limit`` bytes; only ``first`` bytes if
        given) or, for HEAD, the size.  Raises :class:`_Fail`."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.settings.parallel)
        url = base + rel
        env = proxy == "env"
        kw: dict[str, Any] = {} if env or proxy is None else {"proxy": proxy}
        headers = {"Range": f"bytes=0-{first - 1}"} if first else {}
        async with self._sem:
            self.stats.requests += 1
            try:
                async with self._session(env).request(method, url, headers=headers,
                                                      max_redirects=5, **kw) as resp:
                    bound = object_bound if rel.startswith("objects/") else None
                    return await self._answer(resp, url, limit, method, first, bound)
            except _Fail:
                raise
            except TimeoutError:
                raise _Fail(TEMPORARY, f"{url}: timed out") from None
            except aiohttp.ClientPayloadError as exc:
                raise _Fail(TEMPORARY, f"{url}: body cut short ({exc})") from None
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise _Fail(TEMPORARY, f"{url}: {type(exc).__name__}: {exc}") from None

    async def _answer(self, resp: aiohttp.ClientResponse, url: str, limit: int, method: str,
                      first: int | None, bound: Callable[[bytes], int] | None) -> bytes | int:
        status = resp.status
        if status >= 500 or status in (408, 429):
            raise _Fail(TEMPORARY, f"{url}: HTTP {status}")
        if status not in (200, 206) or (status == 206 and not first):
            # 404, and also 403 (S3 answers that for a missing key without list rights)
            raise _Fail(MISSING, f"{url}: HTTP {status}")
        size = resp.content_length
        if size is not None and size > limit and not first:
            raise _Fail(CORRUPT, f"{url}: {size} bytes, over the limit of {limit}")
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise _Fail(CORRUPT, f"{url}: unexpected Content-Encoding "
                                 f"{resp.headers['Content-Encoding']!r}")
        if method == "HEAD":
            if size is None:
                raise _Fail(CORRUPT, f"{url}: HEAD without a Content-Length")
            return size
        want = first if first else limit + 1
        parts: list[bytes] = []
        got = 0
        tightened = bound is None or bool(first)
        while got < want:
            piece = await resp.content.read(min(_PIECE, want - got))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
            self.stats.bytes += len(piece)
            if not tightened and got >= HEADER_SIZE:
                tightened = True
                assert bound is not None
                limit = min(limit, bound(b"".join(parts)[:HEADER_SIZE]))
                want = min(want, limit + 1)
        if got > limit:
            resp.close()  # drop the connection: the rest is never read
            raise _Fail(CORRUPT, f"{url}: body over the limit of {limit} bytes")
        if first and not resp.content.at_eof():
            resp.close()  # a server that ignored Range: do not read the rest
        return b"".join(parts)

    # -- fail-over -------------------------------------------------------------------
    def _order(self) -> list[tuple[int, int]]:
        s0, p0 = self._start
        ns, np_ = len(self.urls), len(self.proxies)
        return [((s0 + i) % ns, (p0 + j) % np_) for i in range(ns) for j in range(np_)]

    async def _failover(self, rel: str, limit: int, check: Callable[[Any], Any] | None, *,
                        method: str = "GET", first: int | None = None) -> Any:
        """The first good answer over every server and proxy; raises :class:`_Fail`
        with the overall conclusion."""
        seen: dict[str, str] = {}
        skip_server = -1
        order = self._order()
        for n, (si, pi) in enumerate(order):
            if si == skip_server:
                continue
            fail = await self._try_pair(si, pi, rel, limit, check, method, first)
            if not isinstance(fail, _Fail):
                self._start = (si, pi)
                if method == "GET" and first is None and rel.startswith("objects/"):
                    self.source_counters[si].fetched(len(fail[2]))  # (type, raw, stored)
                return fail
            self.stats.failures[fail.kind] += 1
            self._count_failure(si, rel, fail.kind, n + 1 < len(order))
            seen.setdefault(fail.kind, fail.msg)
            if fail.kind == MISSING:
                skip_server = si  # the server said so: other proxies will not differ
        kind = TEMPORARY if TEMPORARY in seen else CORRUPT if CORRUPT in seen else MISSING
        if set(seen) == {TEMPORARY}:
            kind = UNREACHABLE
        if kind != MISSING:
            log.warning("%s failed on every server: %s", rel, "; ".join(seen.values()))
        raise _Fail(kind, "; ".join(seen.values()))

    def _count_failure(self, si: int, rel: str, kind: str, more: bool) -> None:
        """Client metrics: a 404 for a release, ref or index file is an answer, not an
        error; a server that failed temporarily or sent bad bytes, with another server
        or proxy still to try, is a fail-over."""
        if kind != MISSING or rel.startswith("objects/"):
            self.source_counters[si].error(kind)
        if kind != MISSING and more:
            self.source_counters[si].failover()

    async def _try_pair(self, si: int, pi: int, rel: str, limit: int,
                        check: Callable[[Any], Any] | None, method: str,
                        first: int | None) -> Any:
        """The checked answer of one server through one proxy, or the :class:`_Fail`."""
        fail: _Fail | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(self.settings.backoff * 2 ** (attempt - 1))
            try:
                body = await self._once(self.urls[si], self.proxies[pi], rel, limit,
                                        method=method, first=first)
            except _Fail as exc:
                fail = exc
                if exc.kind != TEMPORARY:
                    return exc
                continue
            if check is None:
                return body
            try:
                return await asyncio.get_running_loop().run_in_executor(None, check, body)
            except CasError as exc:
                return _Fail(CORRUPT, f"{self.urls[si]}{rel}: {exc}")
        assert fail is not None
        return fail

    async def _shared(self, key: tuple, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Concurrent identical requests wait for one (shielded: a caller that gives up
        does not cancel it for the others)."""
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(make())
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._done(key, f))
        else:
            self.stats.merged += 1
        return await asyncio.shield(fut)

    def _done(self, key: tuple, fut: asyncio.Future) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved: no "never retrieved" noise if every caller gave up

    def _get(self, rel: str, limit: int, check: Callable[[Any], Any] | None,
             missing: Callable[[str], CasError], corrupt: type[CasError], *,
             method: str = "GET", first: int | None = None) -> Any:
        """Synchronous fetch with fail-over; the conclusion as the right CasError."""
        async def go() -> Any:
            return await self._shared((method, rel, first),
                                      lambda: self._failover(rel, limit, check, method=method,
                                                             first=first))
        try:
            return self._run(go())
        except _Fail as f:
            raise _error(f, missing, corrupt) from None

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
            rel = object_relpath(oid)
            try:
                return await self._shared(("GET", rel, None), lambda: self._failover(
                    rel, MAX_STORED_SIZE, _object_check(oid)))
            except _Fail as f:
                return _error(f, _missing_object(oid), ObjectCorrupt)

        async def all_of() -> list[Any]:
            return await asyncio.gather(*(one(o) for o in oids))

        rounds = 1 + len(oids) // self.settings.parallel
        got = self._run(all_of(), self.settings.call_deadline(len(self.urls)) * rounds)
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


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
               sessions: dict[bool, aiohttp.ClientSession]) -> None:
    """Close the sessions, the executor's check threads and the loop of one source
    (its finalizer: it holds no reference to the source itself)."""
    if thread is threading.current_thread():  # collected on the loop's own thread
        loop.call_soon(loop.stop)
        return

    async def shut() -> None:
        for s in list(sessions.values()):
            await s.close()
        await asyncio.get_running_loop().shutdown_default_executor()  # the check threads

    if thread.is_alive():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    if not thread.is_alive():
        loop.close()


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


def _error(f: _Fail, missing: Callable[[str], CasError], corrupt: type[CasError]) -> CasError:
    if f.kind == MISSING:
        return missing(f.msg)
    if f.kind == CORRUPT:
        return corrupt(f.msg)
    if f.kind == UNREACHABLE:
        return ServersUnreachable(f"no server answered: {f.msg} (temporary; retry)")
    return RemoteError(f"{f.msg} (temporary; retry)")
