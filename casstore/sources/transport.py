"""The one HTTP client of casstore: requests to a list of servers, through proxies.

:class:`Transport` knows nothing of objects or releases; it moves bytes of paths
under base URLs.  :class:`~casstore.sources.http.HTTPSource` (reading a store) and
:mod:`casstore.distribute.transfer` (``cas push``/``cas pull``) both sit on it, so
proxies, timeouts, retries and limits mean the same everywhere.  Why it looks the
way it does:

* **A synchronous face over an event loop.**  The FUSE loop and the CLI are
  synchronous; the requests run on an asyncio loop in one helper thread per
  transport (started on first use, and again after a ``fork``: a daemonising mount
  must not inherit a dead thread).  :meth:`Transport.run` submits a coroutine and
  waits for it with an overall deadline, so no caller can hang however the server
  behaves.  A semaphore bounds the requests in flight; identical concurrent GETs
  share one HTTP request.
* **Fail-over, as CVMFS does it.**  Servers (and proxies, ``"DIRECT"`` meaning
  none) are tried in order, starting from the pair that last worked.  An answer
  is sorted into *missing* (404 and other refusals: ask the next server before
  concluding missing), *temporary* (timeout, connection error, 5xx: retry with a
  short backoff, then the next server) and *corrupt* (a caller's check failed, a
  body over its limit: the next server, and never use the bytes).  The conclusion
  across all servers: temporary beats corrupt beats missing, so an object is never
  remembered as bad while a server that might hold it was down.
* **Bounded.**  Bodies are read in pieces and refused past their limit (a body
  that never ends fails, it does not eat memory); a caller's ``bound`` tightens
  the limit from the first bytes (an object's header).  Connect, per-read and
  whole-request timeouts bound a silent server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from casstore.errors import CasError, RemoteError, ServersUnreachable, UsageError
from casstore.format.objects import HEADER_SIZE
from casstore.sources.counters import SourceCounters

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
Bound = Callable[[bytes], int]  # the first HEADER_SIZE bytes -> the most the body may have


@dataclass(frozen=True)
class HTTPSettings:
    """Timeouts, parallelism and proxies of one transport (client config keys)."""

    connect_timeout: float = 5.0     # TCP (and proxy) connect
    read_timeout: float = 10.0       # longest silence while reading headers or body
    request_timeout: float = 120.0   # one whole request, body included
    parallel: int = 16               # requests in flight per transport
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


class Fail(Exception):
    """One answer, or the conclusion over all servers, sorted: ``kind`` is MISSING,
    TEMPORARY, CORRUPT or (a conclusion only) UNREACHABLE.  Callers turn it into the
    :mod:`casstore.errors` class that fits what they asked for."""

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


class Transport:
    """Requests for paths under ``urls`` (fail-over in order), through the settings'
    proxies, on a helper-thread event loop.  Thread-safe."""

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

    def __repr__(self) -> str:
        return f"Transport({self.urls!r})"

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
                # Closes the sessions and stops the loop on close(), when the transport
                # is garbage collected, or at exit, whichever comes first: a source its
                # user dropped (a CLI error path) leaves no "Unclosed client session".
                self._finalizer = weakref.finalize(self, _stop_loop, self._loop,
                                                   self._thread, self._sessions)
            return self._loop

    def call_deadline(self) -> float:
        """The longest one fail-over call may take (see :meth:`HTTPSettings.call_deadline`)."""
        return self.settings.call_deadline(len(self.urls))

    def run(self, coro: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for it, at most ``deadline`` s
        (default: :meth:`call_deadline`; ``math.inf``: a long job such as a push,
        whose every request is bounded by the timeouts, waited for without limit)."""
        try:
            loop = self._ensure_loop()
        except BaseException:
            coro.close()  # never started: no "never awaited" warning
            raise
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        limit = deadline if deadline is not None else self.call_deadline()
        try:
            return fut.result(timeout=None if math.isinf(limit) else limit)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ServersUnreachable(f"{self.urls[0]}: no answer within {limit:.0f} s "
                                     "(temporary; retry)") from None
        except BaseException:  # Ctrl-C while waiting: stop the work on the loop too
            fut.cancel()
            raise

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

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.settings.parallel)
        return self._sem

    async def _once(self, base: str, proxy: str | None, rel: str, limit: int, *,
                    method: str = "GET", first: int | None = None,
                    bound: Bound | None = None) -> bytes | int:
        """One read: the body (at most ``limit`` bytes; only ``first`` bytes if
        given) or, for HEAD, the size.  Raises :class:`Fail`."""
        url = base + rel
        env = proxy == "env"
        kw: dict[str, Any] = {} if env or proxy is None else {"proxy": proxy}
        headers = {"Range": f"bytes=0-{first - 1}"} if first else {}
        async with self._semaphore():
            self.stats.requests += 1
            try:
                async with self._session(env).request(method, url, headers=headers,
                                                      max_redirects=5, **kw) as resp:
                    return await self._answer(resp, url, limit, method, first, bound)
            except Fail:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise _temporary(url, exc) from None

    async def _answer(self, resp: aiohttp.ClientResponse, url: str, limit: int, method: str,
                      first: int | None, bound: Bound | None) -> bytes | int:
        status = resp.status
        if status >= 500 or status in (408, 429):
            raise Fail(TEMPORARY, f"{url}: HTTP {status}")
        if status not in (200, 206) or (status == 206 and not first):
            # 404, and also 403 (S3 answers that for a missing key without list rights)
            raise Fail(MISSING, f"{url}: HTTP {status}")
        size = resp.content_length
        if size is not None and size > limit and not first:
            raise Fail(CORRUPT, f"{url}: {size} bytes, over the limit of {limit}")
        _check_identity(resp, url)
        if method == "HEAD":
            if size is None:
                raise Fail(CORRUPT, f"{url}: HEAD without a Content-Length")
            return size
        return await self._read_body(resp, url, limit, first, bound)

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str, limit: int,
                         first: int | None, bound: Bound | None) -> bytes:
        """At most ``limit`` bytes (``first`` only, if given); a longer body is refused
        as soon as it passes the limit, and its connection dropped unread."""
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
            raise Fail(CORRUPT, f"{url}: body over the limit of {limit} bytes")
        if first and not resp.content.at_eof():
            resp.close()  # a server that ignored Range: do not read the rest
        return b"".join(parts)

    # -- fail-over -------------------------------------------------------------------
    def _order(self) -> list[tuple[int, int]]:
        s0, p0 = self._start
        ns, np_ = len(self.urls), len(self.proxies)
        return [((s0 + i) % ns, (p0 + j) % np_) for i in range(ns) for j in range(np_)]

    async def _failover(self, rel: str, limit: int, check: Callable[[Any], Any] | None, *,
                        method: str = "GET", first: int | None = None,
                        bound: Bound | None = None) -> Any:
        """The first good answer over every server and proxy; raises :class:`Fail`
        with the overall conclusion."""
        seen: dict[str, str] = {}
        skip_server = -1
        order = self._order()
        for n, (si, pi) in enumerate(order):
            if si == skip_server:
                continue
            fail = await self._try_pair(si, pi, rel, limit, check, method, first, bound)
            if not isinstance(fail, Fail):
                self._start = (si, pi)
                if method == "GET" and first is None and rel.startswith("objects/"):
                    self.source_counters[si].fetched(_size(fail))
                return fail
            self.stats.failures[fail.kind] += 1
            self._count_failure(si, rel, fail.kind, n + 1 < len(order))
            seen.setdefault(fail.kind, fail.msg)
            if fail.kind == MISSING:
                skip_server = si  # the server said so: other proxies will not differ
        raise _conclusion(rel, seen)

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
                        first: int | None, bound: Bound | None) -> Any:
        """The checked answer of one server through one proxy, or the :class:`Fail`."""
        fail: Fail | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(self.settings.backoff * 2 ** (attempt - 1))
            try:
                body = await self._once(self.urls[si], self.proxies[pi], rel, limit,
                                        method=method, first=first, bound=bound)
            except Fail as exc:
                fail = exc
                if exc.kind != TEMPORARY:
                    return exc
                continue
            if check is None:
                return body
            try:
                return await asyncio.get_running_loop().run_in_executor(None, check, body)
            except CasError as exc:
                return Fail(CORRUPT, f"{self.urls[si]}{rel}: {exc}")
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

    # -- the API -------------------------------------------------------------------
    async def get(self, rel: str, limit: int, check: Callable[[Any], Any] | None = None, *,
                  method: str = "GET", first: int | None = None,
                  bound: Bound | None = None) -> Any:
        """``rel`` from the first server (and proxy) that answers well: the body (or
        the size, for HEAD), passed through ``check`` when given (a CasError from it
        means "these bytes are bad": the next server is asked).  Concurrent identical
        requests share one.  Raises :class:`Fail` with the conclusion.  Call on the
        loop (:meth:`run`)."""
        return await self._shared((method, rel, first), lambda: self._failover(
            rel, limit, check, method=method, first=first, bound=bound))

    async def send(self, method: str, rel: str, limit: int, *,
                   headers: dict[str, str] | None = None, **body: Any) -> tuple[int, bytes]:
        """A write (``PUT``/``POST`` with ``data=`` or ``json=``): the first answer that
        is not temporary, as (status, body of at most ``limit`` bytes), from the first
        server and proxy pair that gives one.  Retried with backoff on temporary
        failures (the writes casstore makes are idempotent).  Redirects are not
        followed (a token must not travel to another host).  Raises :class:`Fail` if
        every pair failed only temporarily, or the answer is over ``limit``."""
        seen: dict[str, str] = {}
        for si, pi in self._order():
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    await asyncio.sleep(self.settings.backoff * 2 ** (attempt - 1))
                try:
                    answer = await self._send_once(self.urls[si], self.proxies[pi], method,
                                                   rel, limit, headers or {}, body)
                except Fail as exc:
                    if exc.kind != TEMPORARY:
                        raise
                    seen.setdefault(TEMPORARY, exc.msg)
                    continue
                self._start = (si, pi)
                return answer
        raise _conclusion(rel, seen)

    async def _send_once(self, base: str, proxy: str | None, method: str, rel: str,
                         limit: int, headers: dict[str, str],
                         body: dict[str, Any]) -> tuple[int, bytes]:
        url = base + rel
        env = proxy == "env"
        kw: dict[str, Any] = {} if env or proxy is None else {"proxy": proxy}
        async with self._semaphore():
            self.stats.requests += 1
            try:
                async with self._session(env).request(method, url, headers=headers,
                                                      allow_redirects=False, **kw,
                                                      **body) as resp:
                    if resp.status >= 500 or resp.status in (408, 429):
                        raise Fail(TEMPORARY, f"{method} {url}: HTTP {resp.status}")
                    size = resp.content_length
                    if size is not None and size > limit:
                        raise Fail(CORRUPT, f"{url}: answer of {size} bytes, over the "
                                            f"limit of {limit}")
                    _check_identity(resp, url)
                    return resp.status, await self._read_body(resp, url, limit, None, None)
            except Fail:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise _temporary(url, exc) from None


def _size(answer: Any) -> int:
    """Stored bytes of a checked object answer (the object check returns a tuple whose
    last item is the stored bytes) or of a plain body."""
    if isinstance(answer, tuple):
        return len(answer[-1])
    return len(answer) if isinstance(answer, bytes | bytearray) else 0


def _check_identity(resp: aiohttp.ClientResponse, url: str) -> None:
    """Bodies are taken as sent: a compressed one would be checked (and limited) as
    other bytes than the server stored."""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise Fail(CORRUPT, f"{url}: unexpected Content-Encoding "
                            f"{resp.headers['Content-Encoding']!r}")


def _temporary(url: str, exc: BaseException) -> Fail:
    """A failure below HTTP (timeout, connection, a body cut short): temporary."""
    if isinstance(exc, TimeoutError):
        return Fail(TEMPORARY, f"{url}: timed out")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Fail(TEMPORARY, f"{url}: body cut short ({exc})")
    return Fail(TEMPORARY, f"{url}: {type(exc).__name__}: {exc}")


def _conclusion(rel: str, seen: dict[str, str]) -> Fail:
    """Temporary beats corrupt beats missing; only-temporary is "unreachable"."""
    kind = TEMPORARY if TEMPORARY in seen else CORRUPT if CORRUPT in seen else MISSING
    if set(seen) == {TEMPORARY}:
        kind = UNREACHABLE
    if kind != MISSING:
        log.warning("%s failed on every server: %s", rel, "; ".join(seen.values()))
    return Fail(kind, "; ".join(seen.values()))


def as_error(f: Fail, missing: Callable[[str], CasError], corrupt: type[CasError], *,
             retry: str = "temporary; retry") -> CasError:
    """The :mod:`casstore.errors` exception for a conclusion: ``missing(msg)`` (what
    was missing is the caller's to name), ``corrupt(msg)``, ServersUnreachable when
    every server failed only temporarily, else RemoteError."""
    if f.kind == MISSING:
        return missing(f.msg)
    if f.kind == CORRUPT:
        return corrupt(f.msg)
    if f.kind == UNREACHABLE:
        return ServersUnreachable(f"no server answered: {f.msg} ({retry})")
    return RemoteError(f"{f.msg} ({retry})")


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
               sessions: dict[bool, aiohttp.ClientSession]) -> None:
    """Close the sessions, the executor's check threads and the loop of one transport
    (its finalizer: it holds no reference to the transport itself)."""
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
