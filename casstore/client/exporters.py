"""Where a mount's metrics go: a node_exporter textfile and a unix-socket HTTP endpoint.

Both publish :meth:`casstore.client.metrics.ClientMetrics.render` (text format
0.0.4, :data:`~casstore.client.metrics.CONTENT_TYPE`) and need no FUSE.  One mount
instance (a mount point in one mount namespace) has one file and one socket,
named by :func:`mount_id`; its series carry the same namespace as a label, so
parallel ``cas exec`` jobs never collide in node_exporter.
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
from pathlib import Path
from typing import Any

from casstore.client.metrics import CONTENT_TYPE, ClientMetrics
from casstore.errors import CasError
from casstore.fileio.fsutil import alive, atomic_write

log = logging.getLogger(__name__)

PRUNE_AGE_S = 600.0  # a textfile this old whose daemon is gone is removed
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # the FUSE loop's, never a worker's


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
    """``GET`` or ``HEAD`` of ``/metrics`` (or ``/``); other paths 404, other methods
    405.  Errors are one plain-text line, not http.server's HTML page."""

    server_version = "casstore-client"
    timeout = 5.0
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self._metrics(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._metrics(with_body=False)

    def _metrics(self, with_body: bool) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = self.server.metrics.render().encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _not_allowed(self) -> None:
        self.send_response(405)
        body = b"405 only GET and HEAD\n"
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", self.error_content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

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
    """Serves the metrics as HTTP ``GET``/``HEAD /metrics`` on a unix socket (mode
    0666: read-only numbers, for ``curl --unix-socket`` or a local scraper)."""

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
