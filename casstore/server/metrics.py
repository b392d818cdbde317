"""``/metrics`` (Prometheus text format) for ``cas serve``.

Requests are counted where aiohttp logs them: in the access logger, which runs
after the response has been sent, so the byte count and latency include the body
(a middleware returns before a file body is sent).  Each app has its own
registry, so several servers in one process (the tests) do not share counters.
Route labels are the route patterns (``/objects/{xx}/{rest}``), never request
text, so a scanner cannot blow up the number of series.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web
from aiohttp.web_log import AccessLogger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import generate_latest

disable_created_metrics()

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)


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
        self.releases = Counter("cas_releases_accepted", "Release documents accepted by PUT",
                                registry=self.registry)

    def record(self, request: web.BaseRequest, response: web.StreamResponse,
               seconds: float) -> None:
        route, status = _route(request), response.status
        key = (route, request.method, status)
        series = self._series.get(key)
        if series is None:  # .labels() is a locked lookup: once per label set, not per request
            kind = "server" if status >= 500 else "client"
            series = self._series[key] = (
                self.requests.labels(route, request.method, str(status)),
                self.bytes_sent.labels(route),
                self.errors.labels(route, kind) if status >= 400 else None,
                self.latency.labels(route))
        requests, sent, errors, latency = series
        requests.inc()
        sent.inc(body_bytes(request, response))
        if errors is not None:
            errors.inc()
        latency.observe(seconds)


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
    match = getattr(request, "match_info", None)
    route = getattr(match, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return resource.canonical


class MetricsAccessLogger(AccessLogger):
    """Records every answered request in the app's metrics; logs it too when the
    ``aiohttp.access`` logger is enabled for INFO (``cas serve --access-log``)."""

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        app = getattr(request, "app", None)
        if app is not None and METRICS in app:
            app[METRICS].record(request, response, time)
        if self.logger.isEnabledFor(logging.INFO):
            super().log(request, response, time)


async def metrics_handler(request: web.Request) -> web.Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # cas serve --workers N: add them up
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = request.app[METRICS].registry
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                            "Cache-Control": "no-store"})


def add_metrics(app: web.Application) -> Metrics:
    metrics = Metrics()
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return metrics


def make_runner(app: web.Application, access_log: bool = False) -> web.AppRunner:
    """An AppRunner whose access logger feeds ``/metrics`` (and logs if asked)."""
    logger = logging.getLogger("aiohttp.access")
    logger.setLevel(logging.INFO if access_log else logging.WARNING)
    return web.AppRunner(app, access_log_class=MetricsAccessLogger, access_log=logger)
