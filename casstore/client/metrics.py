"""Client metrics: counted where things happen, rendered as Prometheus text.

A mounted ``/depot`` runs for months; admins watch it with node_exporter's textfile
collector (or a scrape of a local socket).  Why this module looks as it does:

* **Cheap on the hot path.**  Sources count every object they read (bytes,
  objects, errors, fail-overs) in :class:`~casstore.sources.counters.SourceCounters` (a
  light module of its own, so that sources import no exporter), one row of cells
  per thread (``ShardedCounters``): an increment is a thread-local lookup and a
  list add, never a lock, so the FUSE loop, prefetch workers and the HTTP thread
  never wait on each other.  Rendering sums the rows.
* **No second copy of numbers that already exist.**  The object cache's hits,
  misses and evictions, the file cache's summary, the FUSE error counts and the
  prefetch progress are read when rendering, through the providers attached to
  :class:`ClientMetrics`.  So this model knows nothing of FUSE.
* **One formatter.**  Text comes from ``prometheus_client``'s ``generate_latest``
  (text exposition format 0.0.4, :data:`CONTENT_TYPE`): HELP and TYPE lines,
  counters suffixed ``_total``, label values escaped.
* Every series carries ``mountpoint``, ``release`` and ``mount_ns`` labels (the
  mount namespace, as in the textfile's name and ``cas status --all``): one
  node_exporter collects several mounts, and two ``cas exec`` jobs that mount the
  same release at the same path (each in its own namespace) write distinct series,
  never "collected before with the same name and label values".
* Process and build information are series of this mount too
  (``cas_client_process_*``, ``cas_client_build_info``), prefixed so they never
  clash with node_exporter's own ``process_*`` in the textfile collector.
* Names pass ``promtool check metrics``: counters end in ``_total``, nothing else
  does, units are spelled out (``_seconds``, ``_bytes``).

The exporters (:mod:`casstore.client.exporters`: textfile and unix socket) publish
:meth:`ClientMetrics.render` for the daemon; they need no FUSE either.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from casstore.client.mounttable import mount_ns as current_mount_ns
from casstore.sources.base import source_layers
from casstore.sources.counters import ERROR_KINDS, Gauge, SourceCounters

# What render() returns, as an HTTP Content-Type: text format 0.0.4 (what
# generate_latest writes with its default name escaping; promtool and node_exporter read it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "cas_client_"


# -- walking a composed source ---------------------------------------------------------
def source_counters(source: object) -> list[SourceCounters]:
    """The counters of every layer of a composed source (one per folder or server)."""
    out: list[SourceCounters] = []
    for layer in source_layers(source):
        out.extend(getattr(layer, "source_counters", ()) or ())
    return out


def object_caches(source: object) -> list[Any]:
    """The on-disk object caches among the layers of a composed source."""
    from casstore.sources.objcache import ObjectCache

    return [layer for layer in source_layers(source) if isinstance(layer, ObjectCache)]


# -- the registry of one mount -----------------------------------------------------
FUSE_ERROR_KINDS = ("missing", "corrupt", "other", "internal", "known_bad")


class ClientMetrics:
    """The metrics of one mount; every series carries ``mountpoint``, ``release`` and
    ``mount_ns`` (default: this process's mount namespace).

    The daemon sets :attr:`revision` and :attr:`last_check_success_time` (use
    :meth:`set_revision` and :meth:`check_succeeded`: revision following calls
    them on each successful check and switch) and attaches providers
    (:meth:`attach`).  :meth:`render` is safe from any thread.
    """

    def __init__(self, mountpoint: str, release: str, revision: int, *,
                 mount_ns: str | None = None, source: object | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.labels = {"mountpoint": str(mountpoint), "release": str(release),
                       "mount_ns": current_mount_ns() if mount_ns is None else str(mount_ns)}
        self.clock = clock
        self.revision = Gauge(revision)
        self.last_check_success_time = Gauge(clock())
        self.mounted = Gauge(1)
        self._process = ProcessCollector(namespace=PREFIX.rstrip("_"), registry=None)
        self.source = source
        self.file_cache: Callable[[], dict] | None = None
        self.fuse_errors: Callable[[], Any] | None = None
        self.prefetch: Callable[[], dict] | None = None

    # -- what the daemon calls ---------------------------------------------------
    def set_revision(self, revision: int) -> None:
        """The revision now served (revision following calls this after a switch)."""
        self.revision.set(revision)

    def check_succeeded(self, when: float | None = None) -> None:
        """A release check verified the newest revision (applied or already served)."""
        self.last_check_success_time.set(self.clock() if when is None else when)

    def attach(self, *, source: object | None = None,
               file_cache: Callable[[], dict] | None = None,
               fuse_errors: Callable[[], Any] | None = None,
               prefetch: Callable[[], dict] | None = None) -> None:
        """Providers read at render time (any may be left out)."""
        if source is not None:
            self.source = source
        self.file_cache = file_cache or self.file_cache
        self.fuse_errors = fuse_errors or self.fuse_errors
        self.prefetch = prefetch or self.prefetch

    # -- rendering ---------------------------------------------------------------------
    def render(self) -> str:
        """Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`)."""
        return generate_latest(self).decode()  # type: ignore[arg-type]

    def collect(self) -> Iterable[Metric]:
        """The families, for ``prometheus_client.generate_latest``."""
        fam = _Families(self.labels)
        self._mount(fam)
        self._build_and_process(fam)
        self._sources(fam)
        self._object_cache(fam)
        self._file_cache(fam)
        self._fuse(fam)
        self._prefetch(fam)
        return fam.out

    def _mount(self, fam: _Families) -> None:
        fam.gauge("mounted", "1 while the mount is served, 0 in the file written at exit",
                  self.mounted.value)
        fam.gauge("revision", "Release revision being served", self.revision.value)
        fam.gauge("last_check_success_time_seconds",
                  "Unix time of the last successful release check (mount verification "
                  "or revision following)", self.last_check_success_time.value)

    def _build_and_process(self, fam: _Families) -> None:
        """``build_info`` (value 1, versions as labels) and the daemon's CPU, memory,
        file descriptors and start time (prometheus_client's /proc reader), each
        with this mount's labels."""
        info = fam.gauge_family("build_info", "Versions of the casstore client serving this "
                                "mount (value 1)", ["version", "python"])
        fam.add(info, [casstore_version(), platform.python_version()], 1)
        for m in self._process.collect():
            fam.adopt(m)

    def _sources(self, fam: _Families) -> None:
        snaps = [(c.label, c.snapshot()) for c in source_counters(self.source)]
        if not snaps:
            return
        objs = fam.counter("source_fetched_objects", "Objects read from the source "
                           "(a store folder or one server URL)", ["source"])
        nbytes = fam.counter("source_fetched_bytes", "Stored (compressed) bytes of the "
                             "objects read from the source", ["source"])
        errs = fam.counter("source_errors", "Failed object reads (folder) or requests "
                           "(server, after retries), by kind", ["source", "kind"])
        fover = fam.counter("source_failovers", "Requests this server failed (temporary "
                            "or corrupt) that went on to the next server or proxy",
                            ["source"])
        for label, s in snaps:
            fam.add(objs, [label], s["objects"])
            fam.add(nbytes, [label], s["bytes"])
            fam.add(fover, [label], s["failovers"])
            for kind in ERROR_KINDS:
                fam.add(errs, [label, kind], s["errors"][kind])

    def _object_cache(self, fam: _Families) -> None:
        caches = object_caches(self.source)
        if not caches:
            return
        st = [c.stats for c in caches]
        fam.counter("object_cache_hits", "Objects served from the on-disk object cache "
                    "(verified)", value=sum(s.hits for s in st))
        fam.counter("object_cache_misses", "Objects not in the object cache (fetched from "
                    "the source)", value=sum(s.misses for s in st))
        fam.counter("object_cache_evictions", "Objects this daemon evicted from the object "
                    "cache (LRU, over quota)", value=sum(s.evicted for s in st))
        fam.counter("object_cache_dropped", "Cached objects dropped because they failed "
                    "verification or were not plausible files", value=sum(s.dropped for s in st))
        fam.gauge("object_cache_bytes", "Bytes in the object cache folder (this daemon's "
                  "estimate)", sum(c.used_bytes_estimate() for c in caches))
        fam.gauge("object_cache_max_bytes", "Quota of the object cache",
                  sum(c.max_bytes for c in caches))

    def _file_cache(self, fam: _Families) -> None:
        if self.file_cache is None:
            return
        s = self.file_cache()
        fam.counter("file_cache_hits", "Reads served from a verified whole-file copy",
                    value=s.get("hits", 0))
        fam.counter("file_cache_fallbacks", "Reads of large files served through the "
                    "reader instead (copy not ready or unusable)", value=s.get("fallbacks", 0))
        fam.counter("file_cache_copies", "Whole-file copies started",
                    value=s.get("prefetches", 0))
        fam.counter("file_cache_evictions", "Whole-file copies evicted",
                    value=s.get("evictions", 0))
        fam.gauge("file_cache_bytes", "Bytes in whole-file copies being served",
                  s.get("bytes", 0))

    def _fuse(self, fam: _Families) -> None:
        if self.fuse_errors is None:
            return
        errors = self.fuse_errors()
        fam.counter("eio", "Requests answered with EIO (missing or corrupt objects, "
                    "internal errors)", value=errors.get("eio", 0))
        kinds = fam.counter("fuse_errors", "Failed requests by cause (known_bad: failed at "
                            "once, the object failed before)", ["kind"])
        for kind in FUSE_ERROR_KINDS:
            fam.add(kinds, [kind], errors.get(kind, 0))

    def _prefetch(self, fam: _Families) -> None:
        p = self.prefetch() if self.prefetch is not None else {}
        fam.gauge("prefetch_objects_done", "Objects of the prefetch list fetched (or found "
                  "cached) so far", p.get("done", 0))
        fam.gauge("prefetch_objects_listed", "Objects in the prefetch list (0: no list)",
                  p.get("total", 0))
        fam.gauge("prefetch_bytes_done", "Stored bytes of the prefetch list done",
                  p.get("bytes_done", 0))
        fam.gauge("prefetch_bytes_listed", "Stored bytes of the prefetch list",
                  p.get("bytes_total", 0))
        fam.gauge("prefetch_errors", "Prefetch list objects that could not be fetched",
                  p.get("errors", 0))


class _Families:
    """Builds metric families with the mount's labels added to every sample."""

    def __init__(self, const: dict[str, str]) -> None:
        self.const_names = list(const)
        self.const_values = list(const.values())
        self.out: list[Metric] = []

    def counter(self, name: str, doc: str, labels: list[str] | None = None,
                value: float | None = None) -> CounterMetricFamily:
        m = CounterMetricFamily(PREFIX + name, doc, labels=[*self.const_names, *(labels or [])])
        self.out.append(m)
        if value is not None:
            self.add(m, [], value)
        return m

    def gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        m = self.gauge_family(name, doc)
        m.add_metric(self.const_values, value)
        return m

    def gauge_family(self, name: str, doc: str,
                     labels: list[str] | None = None) -> GaugeMetricFamily:
        m = GaugeMetricFamily(PREFIX + name, doc, labels=[*self.const_names, *(labels or [])])
        self.out.append(m)
        return m

    def adopt(self, m: Metric) -> None:
        """A family from another collector, its samples given this mount's labels."""
        const = dict(zip(self.const_names, self.const_values, strict=True))
        copy = Metric(m.name, m.documentation, m.type, m.unit)
        copy.samples = [s._replace(labels={**const, **s.labels}) for s in m.samples]
        self.out.append(copy)

    def add(self, m: Metric, labels: list[str], value: float) -> None:
        m.add_metric([*self.const_values, *labels], value)  # type: ignore[attr-defined]


@cache
def casstore_version() -> str:
    """The installed casstore's version (its package metadata), for ``build_info``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("casstore")
    except PackageNotFoundError:
        return "unknown"
