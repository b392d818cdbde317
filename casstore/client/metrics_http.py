"""The unix-socket HTTP server behind :class:`casstore.client.exporters.SocketExporter`.

A module of its own so that a mount without a metrics socket never imports
``http.server`` (and the email and html packages it pulls in).
"""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
from typing import Any

from casstore.client.metrics import CONTENT_TYPE, ClientMetrics

log = logging.getLogger("casstore.client.exporters")


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


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, metrics: ClientMetrics) -> None:
        self.metrics = metrics
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _addr = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler indexes client_address
