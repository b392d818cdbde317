"""Servers for the store-protocol and push tests: the app in a thread, or the real
``cas serve`` process; both on port 0 and always stopped (by PID for the process)."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from casstore.server.app import make_app
from casstore.server.metrics import make_runner
from casstore.server.storeproto import StoreConfig

from helpers import cas, terminate


class ThreadServer:
    """``make_app(None, cfg)`` on 127.0.0.1:0 in a thread; ``middlewares`` go first."""

    def __init__(self, cfg: StoreConfig, middlewares: list | None = None) -> None:
        self.cfg = cfg
        self.middlewares = middlewares or []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        assert self.ready.wait(60), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def _build(self) -> tuple[web.Application, web.AppRunner]:
        """The app and its runner (a subclass serves another protocol)."""
        app = make_app(None, self.cfg)
        app.middlewares[:0] = self.middlewares
        return app, make_runner(app)

    async def _start(self) -> None:
        self.app, self.runner = self._build()
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ProcessServer:
    """The real ``cas serve STORE`` on port 0; stopped with SIGTERM by its PID."""

    def __init__(self, store: Path, log: Path, *extra: str) -> None:
        self.args = [sys.executable, "-m", "casstore", "serve", str(store), "--listen",
                     "127.0.0.1:0", *extra]
        self.log = log

    def __enter__(self) -> ProcessServer:
        self.err = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.err)
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline and b"listening on" not in line:
            r, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if r:
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if self.proc.poll() is not None:
                break
        if b"listening on" not in line:
            self.__exit__()
            raise AssertionError(f"cas serve did not start: {self.log.read_text()}")
        self.url = line.decode().split("listening on ")[1].strip()
        return self

    def __exit__(self, *exc: object) -> None:
        terminate(self.proc)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.err.close()


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as given (no client-side normalising)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    _s, _h, body = raw(url, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        m = re.match(r"^([a-z_]+)(\{.*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def metric_settled(url: str, name: str, **labels: str) -> float:
    """:func:`metric` once it has stopped changing for 0.2 s.  With several workers a
    request is counted when its worker's event loop next runs, which on a busy machine
    can be after the client already has the answer."""
    last = metric(url, name, **labels)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = metric(url, name, **labels)
        if now == last:
            return now
        last = now
    return last


def new_store(path: Path) -> Path:
    cas(path, "init", check=True)
    return path


def copy_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("lock", "server"))
    (dest / "lock").touch()
    return dest


def token_for(store: Path, name: str = "alice") -> str:
    return cas(store, "serve", "token", "add", name, check=True).out.strip()


def pub_hex(pub: Path) -> str:
    return pub.read_text().split()[1]


def object_files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in (store / "objects").rglob("*") if p.is_file()}


def tmp_files(store: Path) -> list[str]:
    return os.listdir(store / "tmp")


def wait_quiet(url: str, method: str = "PUT", timeout: float = 30) -> None:
    """Wait until the server has answered no new ``method`` request for 0.5 s (an
    upload still in flight from a killed or failed client has finished or failed)."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = metric(url, "cas_http_requests_total", method=method)
        if now == last:
            return
        last = now
        time.sleep(0.5)
