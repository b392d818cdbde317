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
  (exposition format 0.0.4, as the server's ``/metrics``): HELP and TYPE lines,
  counters suffixed ``_total``, label values escaped.
* Every series carries ``mountpoint`` and ``release`` labels, so one node_exporter
  can collect several mounts.

The exporters at the end (:class:`TextfileExporter`, :class:`SocketExporter`)
publish :meth:`ClientMetrics.render` for the daemon; they need no FUSE either.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import logging
import os
import re
import signal
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from casstore.errors import CasError
from casstore.fileio.fsutil import alive, atomic_write
from casstore.sources.base import source_layers
from casstore.sources.counters import ERROR_KINDS, Gauge, SourceCounters

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "cas_client_"
PRUNE_AGE_S = 600.0  # a textfile this old whose daemon is gone is removed
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # the FUSE loop's, never a worker's


# -- walking a composed source ---------------------------------------------------------
def source_counters(source: object) -> list[SourceCounters]:
    out: list[SourceCounters] = []
    for layer in source_layers(source):
        out.extend(getattr(layer, "source_counters", ()) or ())
    return out


def object_caches(source: object) -> list[Any]:
    from casstore.sources.objcache import ObjectCache

    return [layer for layer in source_layers(source) if isinstance(layer, ObjectCache)]


# -- the registry of one mount -----------------------------------------------------
FUSE_ERROR_KINDS = ("missing", "corrupt", "other", "internal", "known_bad")


class ClientMetrics:
    """The metrics of one mount; every series carries ``mountpoint`` and ``release``.

    The daemon sets :attr:`revision` and :attr:`last_check_success_time` (use
    :meth:`set_revision` and :meth:`check_succeeded`: revision following calls
    them on each successful check and switch) and attaches providers
    (:meth:`attach`).  :meth:`render` is safe from any thread.
    """

    def __init__(self, mountpoint: str, release: str, revision: int, *,
                 source: object | None = None, clock: Callable[[], float] = time.time) -> None:
        self.labels = {"mountpoint": str(mountpoint), "release": str(release)}
        self.clock = clock
        self.revision = Gauge(revision)
        self.last_check_success_time = Gauge(clock())
        self.start_time = Gauge(clock())
        self.mounted = Gauge(1)
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
        """Prometheus text format 0.0.4."""
        return generate_latest(self).decode()  # type: ignore[arg-type]

    def collect(self) -> Iterable[Metric]:
        """The families, for ``prometheus_client.generate_latest``."""
        fam = _Families(self.labels)
        self._mount(fam)
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
        fam.gauge("start_time_seconds", "Unix time the daemon started", self.start_time.value)

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
        fam.gauge("prefetch_objects_total", "Objects in the prefetch list (0: no list)",
                  p.get("total", 0))
        fam.gauge("prefetch_bytes_done", "Stored bytes of the prefetch list done",
                  p.get("bytes_done", 0))
        fam.gauge("prefetch_bytes_total", "Stored bytes of the prefetch list",
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
        m = GaugeMetricFamily(PREFIX + name, doc, labels=self.const_names)
        m.add_metric(self.const_values, value)
        self.out.append(m)
        return m

    def add(self, m: Metric, labels: list[str], value: float) -> None:
        m.add_metric([*self.const_values, *labels], value)  # type: ignore[attr-defined]


# -- exporters -------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def mount_id(mountpoint: str, ns: str) -> str:
    """A file-name-safe id of a mount: its path (``/`` -> ``_``) and mount namespace,
    as the status file is named (``cas exec`` jobs mount one path in many namespaces)."""
    path = _UNSAFE.sub("_", str(mountpoint).strip("/")) or "root"
    return f"{path}-{ns}"


def textfile_path(folder: Path, mid: str) -> Path:
    return Path(folder) / f"casstore_{mid}.prom"


def prune_textfiles(folder: Path, max_age_s: float = PRUNE_AGE_S) -> None:
    """Remove metrics files of daemons that are gone (written at exit, or left by a
    killed daemon): untouched for ``max_age_s`` (a live daemon rewrites its file
    every few seconds) and naming a pid that no longer exists."""
    now = time.time()
    for path in Path(folder).glob("casstore_*.prom"):
        try:
            if now - path.stat().st_mtime < max_age_s:
                continue
            with open(path, "rb") as f:
                first = f.readline(200).decode("ascii", "replace")
        except OSError:
            continue
        m = re.match(r"# casstore client pid (\d+)", first)
        if m and not alive(int(m.group(1))):
            path.unlink(missing_ok=True)


class TextfileExporter:
    """Writes ``<folder>/casstore_<mount id>.prom`` every ``interval`` s and at stop.

    Written to a temporary file in the same folder and renamed, as the textfile
    collector requires (it must never read half a file); the temporary name does
    not end in ``.prom``, so the collector ignores it.
    """

    def __init__(self, metrics: ClientMetrics, folder: Path, mid: str,
                 interval: float = 5.0) -> None:
        self.metrics = metrics
        self.folder = Path(folder)
        self.path = textfile_path(self.folder, mid)
        self.interval = interval
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._failed = False

    def write(self) -> bool:
        try:
            body = f"# casstore client pid {os.getpid()}\n{self.metrics.render()}"
            atomic_write(self.path, body.encode(), self.folder, durable=False)
        except (OSError, CasError) as exc:
            if not self._failed:  # one warning, not one every few seconds
                log.warning("cannot write metrics file %s: %s", self.path, exc)
            self._failed = True
            return False
        except Exception:  # noqa: BLE001 - a metrics bug must not stop the thread
            if not self._failed:
                log.exception("cannot render the metrics")
            self._failed = True
            return False
        self._failed = False
        return True

    def start(self) -> None:
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            prune_textfiles(self.folder)
        self.write()
        self.thread = threading.Thread(target=self._run, daemon=True, name="metrics-file")
        self.thread.start()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        while not self.stop_event.wait(self.interval):
            self.write()

    def stop(self) -> None:
        """Stop the thread and write the final values (``mounted`` 0), if started."""
        self.stop_event.set()
        if self.thread is None:
            return
        self.thread.join(timeout=10)
        self.metrics.mounted.set(0)
        self.write()


class _Handler(http.server.BaseHTTPRequestHandler):
    """``GET /metrics`` (or ``/``); anything else 404, other methods 501."""

    server_version = "casstore-client"
    timeout = 5.0

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.server.metrics.render().encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a unix socket peer has no address

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("metrics socket: " + format, *args)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, metrics: ClientMetrics) -> None:
        self.metrics = metrics
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _addr = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler indexes client_address


class SocketExporter:
    """Serves the metrics as HTTP ``GET /metrics`` on a unix socket (mode 0666:
    read-only numbers, for ``curl --unix-socket`` or a local scraper)."""

    def __init__(self, metrics: ClientMetrics, path: Path) -> None:
        self.metrics = metrics
        self.path = Path(path)
        self.server: _UnixHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self._ino: int | None = None

    def start(self) -> bool:
        """Bind and serve; False (and one warning) if the path is taken or unusable."""
        if not self._clear_stale():
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.server = _UnixHTTPServer(str(self.path), self.metrics)
            os.chmod(self.path, 0o666)
            self._ino = os.lstat(self.path).st_ino
        except OSError as exc:
            log.warning("cannot serve metrics on %s: %s", self.path, exc.strerror or exc)
            if self.server is not None:
                self.server.server_close()
                self.server = None
            return False
        self.thread = threading.Thread(target=self._serve, daemon=True, name="metrics-socket")
        self.thread.start()
        return True

    def _serve(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # inherited by handler threads
        assert self.server is not None
        self.server.serve_forever(poll_interval=0.5)

    def _clear_stale(self) -> bool:
        """Remove a socket left by a dead daemon; refuse one that answers, or a file."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("cannot serve metrics on %s: %s", self.path, exc.strerror)
            return False
        if not stat.S_ISSOCK(st.st_mode):
            log.warning("cannot serve metrics on %s: it exists and is not a socket", self.path)
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(str(self.path))
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    log.warning("cannot serve metrics on %s: %s", self.path, exc.strerror)
                    return False
            else:
                log.warning("cannot serve metrics on %s: another process serves it", self.path)
                return False
        self.path.unlink(missing_ok=True)
        return True

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._ino:  # still ours
                self.path.unlink()
        self.server = None


class Exporters:
    """The exporters a client config asks for (none by default), started and stopped
    together by the daemon."""

    def __init__(self, metrics: ClientMetrics, textfile_dir: Path | None,
                 socket_path: Path | None, mid: str, interval: float = 5.0) -> None:
        self.metrics = metrics
        self.textfile = (TextfileExporter(metrics, textfile_dir, mid, interval)
                         if textfile_dir is not None else None)
        self.socket = (SocketExporter(metrics, Path(str(socket_path).replace("{id}", mid)))
                       if socket_path is not None else None)

    @classmethod
    def from_config(cls, metrics: ClientMetrics, cfg: Any, mid: str) -> Exporters:
        return cls(metrics, cfg.metrics_textfile_dir, cfg.metrics_socket, mid,
                   cfg.metrics_interval)

    def describe(self) -> dict[str, str]:
        """For the status file: where the metrics go."""
        out = {}
        if self.textfile is not None:
            out["textfile"] = str(self.textfile.path)
        if self.socket is not None:
            out["socket"] = str(self.socket.path)
        return out

    def start(self) -> None:
        """Start what is configured; a failure is logged, never fatal to the mount."""
        for exporter in (self.textfile, self.socket):
            if exporter is None:
                continue
            try:
                exporter.start()
            except Exception:  # noqa: BLE001 - metrics are advisory
                log.exception("cannot start the metrics %s", type(exporter).__name__)

    def stop(self) -> None:
        """The final textfile (``mounted`` 0) is written after the socket closes."""
        if self.socket is not None:
            self.socket.stop()
        if self.textfile is not None:
            self.textfile.stop()
