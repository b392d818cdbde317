"""``/metrics`` (Prometheus text format) for ``cas serve``.

Requests are counted where aiohttp logs them: in the access logger, which runs
after the response has been sent, so the byte count and latency include the body
(a middleware returns before a file body is sent).  Each app has its own
registry, so several servers in one process (the tests) do not share counters.
Route labels are the route patterns (``/objects/{xx}/{rest}``), never request
text, so a scanner cannot blow up the number of series.  Requests that aiohttp's
parser rejects (bad request line, too many headers, TLS bytes) never reach the app;
they are counted under the route ``rejected``, so every answered request is counted.
The exposition is Prometheus text format 0.0.4, the version docs/HTTP.md names and
``promtool check metrics`` reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import resource
from bisect import bisect_left

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_log import AccessLogger
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import generate_latest

disable_created_metrics()
# The classic text format, which every Prometheus and promtool reads (prometheus-client's
# "latest" announces 1.0.0, whose escaping rules our plain metric names never need).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A cached object or tarball is answered in tens to hundreds of microseconds: the
# buckets start at 50 µs so that the histogram tells those apart.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
           0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The counters of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cas_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.bytes_sent = Counter("cas_http_response_body_bytes", "Response body bytes sent",
                                  ["route"], registry=self.registry)
        self.errors = Counter("cas_http_errors", "Responses with a 4xx or 5xx status",
                              ["route", "kind"], registry=self.registry)
        self.latency = Histogram("cas_http_request_duration_seconds",
                                 "Time from request to the end of the response",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.uploaded = Counter("cas_objects_received", "Objects stored by PUT (new or "
                                "repaired)", registry=self.registry)
        self.uploaded_bytes = Counter("cas_objects_received_bytes", "Stored bytes of the "
                                      "objects received by PUT", registry=self.registry)
        self._series: dict[tuple[str, str, int], tuple] = {}
        self._pending: dict[tuple[str, str, int], list] = {}
        self._flush_soon = False
        self.releases = Counter("cas_releases_accepted", "Release documents accepted by PUT",
                                registry=self.registry)
        self.refused = Counter("cas_http_connections_refused", "Connections closed at once "
                               "(per-client or total connection cap reached)", ["reason"],
                               registry=self.registry)
        self._tarball = {kind: Counter(f"cas_pkg_tarball_{kind}", text, registry=self.registry)
                         for kind, text in (
                             ("hits", "Pkg tarball requests answered from the cache"),
                             ("builds", "Pkg tarballs made and checked from the store"),
                             ("evictions", "Cached Pkg tarballs removed to stay in bounds"),
                             ("altered", "Cached Pkg tarballs found altered and rebuilt"))}
        self._tarball_bytes = {kind: Counter(f"cas_pkg_tarball_{kind}_bytes", text,
                                             registry=self.registry)
                               for kind, text in (
                                   ("builds", "Bytes of the Pkg tarballs made"),
                                   ("evictions", "Bytes of the cached Pkg tarballs removed"))}
        self.cache_bytes = Gauge("cas_pkg_tarball_cache_bytes", "Bytes in the tarball cache "
                                 "as this process last saw it", registry=self.registry,
                                 multiprocess_mode="max")
        self.build_seconds = Histogram("cas_pkg_tarball_build_duration_seconds",
                                       "Time to make and check one Pkg tarball",
                                       buckets=BUILD_BUCKETS, registry=self.registry)
        self._process_metrics()

    def _process_metrics(self) -> None:
        """Build info, and the CPU and memory of the worker processes summed over the
        live ones (each worker sets its own values whenever it hands over requests, and
        once at start), under ``cas_serve_`` names so they never clash with another
        exporter's ``process_*``."""
        info = Gauge("cas_serve_build_info", "Versions of the casstore server (value 1)",
                     ["version", "python", "aiohttp"], registry=self.registry,
                     multiprocess_mode="max")
        info.labels(_casstore_version(), platform.python_version(), aiohttp.__version__).set(1)
        self.cpu = Gauge("cas_serve_process_cpu_seconds", "CPU seconds used by the live "
                         "server processes", registry=self.registry, multiprocess_mode="livesum")
        self.rss = Gauge("cas_serve_process_resident_memory_bytes", "Resident memory of the "
                         "live server processes", registry=self.registry,
                         multiprocess_mode="livesum")
        self.sample_process()

    def sample_process(self) -> None:
        """This process's CPU time and resident memory (no /proc parsing beyond statm)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu.set(usage.ru_utime + usage.ru_stime)
        try:
            with open("/proc/self/statm", "rb") as f:
                self.rss.set(int(f.read().split()[1]) * resource.getpagesize())
        except (OSError, ValueError, IndexError):
            pass

    def tarball_event(self, kind: str, value: float) -> None:
        """Called by the tarball cache (from any thread): a hit, build, evict or altered
        file with its size, a build's ``build_seconds``, or the cache's ``total`` bytes."""
        if kind == "total":
            self.cache_bytes.set(value)
            return
        if kind == "build_seconds":
            self.build_seconds.observe(value)
            return
        name = {"hit": "hits", "build": "builds", "evict": "evictions",
                "altered": "altered"}[kind]
        self._tarball[name].inc()
        if name in self._tarball_bytes:
            self._tarball_bytes[name].inc(value)

    def record(self, request: web.BaseRequest, response: web.StreamResponse,
               seconds: float) -> None:
        """Count one answered request.  Added up here and handed to prometheus-client
        once per event-loop pass (:meth:`flush`): its updates are locked, and in
        multiprocess mode written to a shared file, about 20-30 µs per request when
        done one by one, which is a third of a small object's whole cost."""
        key = (_route(request), request.method, response.status)
        p = self._pending.get(key)
        if p is None:
            p = self._pending[key] = [0, 0, 0.0, [0] * (len(BUCKETS) + 1)]
        p[0] += 1
        p[1] += body_bytes(request, response)
        p[2] += seconds
        p[3][bisect_left(BUCKETS, seconds)] += 1
        if not self._flush_soon:
            self._flush_soon = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (never in the server): now
                self.flush()

    def flush(self) -> None:
        """Hand the requests counted since the last pass to prometheus-client."""
        pending, self._pending, self._flush_soon = self._pending, {}, False
        self.sample_process()
        for key, (n, nbytes, total, buckets) in pending.items():
            requests, sent, errors, latency = self._series_of(key)
            requests.inc(n)
            sent.inc(nbytes)
            if errors is not None:
                errors.inc(n)
            _observe_many(latency, buckets, total)

    def _series_of(self, key: tuple[str, str, int]) -> tuple:
        """The labelled children of a (route, method, status); ``.labels()`` is a locked
        lookup, so once per label set."""
        series = self._series.get(key)
        if series is None:
            route, method, status = key
            kind = "server" if status >= 500 else "client"
            series = self._series[key] = (
                self.requests.labels(route, method, str(status)),
                self.bytes_sent.labels(route),
                self.errors.labels(route, kind) if status >= 400 else None,
                self.latency.labels(route))
        return series


def _observe_many(child: Histogram, counts: list[int], total: float) -> None:
    """Add per-bucket counts and their sum to a histogram child at once.

    prometheus-client has no public bulk observe, so this adds to the child's bucket
    and sum values (``_buckets``, ``_sum``: stable for years, and pyproject pins the
    minor version).  Without them it falls back to one ``observe`` per request at
    the bucket's bound (the sum is then approximate).
    """
    buckets, acc = getattr(child, "_buckets", None), getattr(child, "_sum", None)
    if buckets is None or acc is None or len(buckets) != len(counts):
        for bound, n in zip((*BUCKETS, BUCKETS[-1] * 2), counts, strict=True):
            for _ in range(n):
                child.observe(bound)
        return
    acc.inc(total)
    for value, n in zip(buckets, counts, strict=True):
        if n:
            value.inc(n)


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes sent (aiohttp's ``body_length`` also counts the headers, and misses
    what ``sendfile`` sent, so file responses count their own in ``cas_bytes``)."""
    sent = getattr(response, "cas_bytes", None)
    if sent is not None:
        return sent
    if request.method == "HEAD" or response.status in (204, 304) or not response.prepared:
        return 0
    return response.content_length or 0


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def _route(request: web.BaseRequest) -> str:
    """The route pattern; ``rejected`` for a request the parser refused (it was never
    routed), ``unmatched`` for one outside every route."""
    try:
        match = request.match_info  # type: ignore[attr-defined]
    except (AssertionError, AttributeError):  # never routed
        return "rejected"
    if match.http_exception is not None:
        match = request.get(MATCH_KEY, match)  # routed after merging slashes
    resource = getattr(match.route, "resource", None)
    if resource is None:
        return "unmatched"
    return resource.canonical


MATCH_KEY = "cas_match"  # a request re-routed after path normalisation keeps its match here


class MetricsAccessLogger(AccessLogger):
    """Records every answered request in the metrics of the runner's app (requests
    the parser rejected have no app of their own); logs it too when the
    ``aiohttp.access`` logger is enabled for INFO (``cas serve --access-log``)."""

    metrics: Metrics | None = None  # set on the subclass made for each runner

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if self.metrics is not None:
            self.metrics.record(request, response, time)
        if self.logger.isEnabledFor(logging.INFO):
            super().log(request, response, time)


async def metrics_handler(request: web.Request) -> web.Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # cas serve --workers N: add them up
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = request.app[METRICS].registry
    request.app[METRICS].flush()
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE,
                                            "Cache-Control": "no-store"})


def add_metrics(app: web.Application) -> Metrics:
    metrics = Metrics()
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return metrics


KEEPALIVE_TIMEOUT = 15.0  # s: an idle connection, or one that has not sent whole headers


def handler_args(app: web.Application, access_log: bool = False,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> dict:
    """The connection handler's settings: an access logger feeding the app's
    ``/metrics`` (and logging if asked), and the keep-alive deadline.

    aiohttp arms the keep-alive timer when a connection opens and after each response,
    and only a complete request head stops it, so ``keepalive_timeout`` is also the
    deadline for sending the headers: a silent or dribbling client is closed then.
    """
    logger = logging.getLogger("aiohttp.access")
    logger.setLevel(logging.INFO if access_log else logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_one_line)
    counted = type("AppAccessLogger", (MetricsAccessLogger,), {"metrics": app.get(METRICS)})
    return {"access_log_class": counted, "access_log": logger,
            "keepalive_timeout": keepalive_timeout}


def make_runner(app: web.Application, access_log: bool = False,
                keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                shutdown_timeout: float = 60.0) -> web.AppRunner:
    """An AppRunner with :func:`handler_args`."""
    return web.AppRunner(app, shutdown_timeout=shutdown_timeout,
                         **handler_args(app, access_log, keepalive_timeout))


def _one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs a traceback, with the request text, for each request its parser
    rejects: keep one line naming the error (a warning: the client's fault)."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text = str(getattr(exc, "message", "") or exc).strip()
        first = text.splitlines()[0] if text else ""
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {first[:120]}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
    return True


def _casstore_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("casstore")
    except PackageNotFoundError:
        return "unknown"
