"""Network test harness (tests and bench only, not product): real servers on loopback.

* :class:`Nginx` - Debian's nginx serving a store folder as static files under a
  URL prefix, on a free port, with an access log to count requests;
* :class:`Hostile` - an aiohttp server that answers each object path wrongly on
  purpose (wrong bytes, a truncated body, a body that never ends, 500, 404) or
  correctly from a store folder, and counts requests;
* :class:`Silent` - accepts TCP connections and never says a word;
* :class:`ForwardProxy` - a tiny HTTP forward proxy (absolute-form requests) that
  counts what goes through it;
* :class:`LatencyProxy` - a TCP proxy that delays every chunk by ``delay`` seconds
  each way (this kernel has no netem; used by the WAN benchmark too);
* :class:`Squid` - Debian's squid as a caching HTTP proxy on loopback, with its own
  config, logs and pid file in a work folder, and hit/miss counts from its access log.

Every server binds port 0 (or a port just found free), runs until ``stop()``, and
ends only what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from helpers import terminate

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SQUID = shutil.which("squid") or "/usr/sbin/squid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the tests start and stop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


# -- nginx ---------------------------------------------------------------------------
def nginx_conf(d: Path, http_body: str, connections: int = 512) -> str:
    """A whole nginx.conf for a private nginx in folder ``d`` (pid, logs and temp files
    there, root's own user when run as root) around ``http_body``, the inside of the
    ``http`` block."""
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections {connections}; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
{http_body}
}}
"""


class Nginx:
    """``nginx -g 'daemon off;'`` serving ``store`` at ``http://127.0.0.1:PORT/PREFIX/``."""

    def __init__(self, store: Path, workdir: Path, prefix: str = "store") -> None:
        self.store = Path(store)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.prefix}"

    def _conf(self) -> str:
        return nginx_conf(self.dir, f"""
  default_type application/octet-stream;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port};
    location /{self.prefix}/objects/ {{
      alias {self.store}/objects/;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }}
    location ~ ^/{self.prefix}/(releases/([^/]+/)?_index[.]json)$ {{
      alias {self.store}/$1;
      add_header Cache-Control "public, no-cache";
    }}
    location /{self.prefix}/ {{
      alias {self.store}/;
      add_header Cache-Control "max-age=60";
      location ~ ^/{self.prefix}/(index|tmp|lock) {{ return 404; }}
    }}
  }}""")

    def start(self, port: int = 0) -> Nginx:
        """Start on ``port`` (again on the same one after a stop), else a free one."""
        for _attempt in range(5):  # a port found free may be taken before nginx binds it
            self.port = port or free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self._conf())
            self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(conf),
                                          "-g", "daemon off;"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_port(self.port, 10)
                return self
            except TimeoutError:
                self.stop()
        raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text()}")

    def requests(self) -> list[str]:
        """Request lines from the access log (``GET /store/objects/.. HTTP/1.1``)."""
        try:
            lines = (self.dir / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [ln.split('"')[1] for ln in lines if ln.count('"') >= 2]

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc, 15)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


# -- a hostile (or good) aiohttp server ----------------------------------------------
class Hostile:
    """Serves ``store`` at ``/store/``; ``mode`` decides how objects are answered:
    good, wrong (right size, wrong bytes), truncate, endless, 500, 404, slow (good
    bytes after ``slow_s``).  ``modes_by_hex`` overrides per object."""

    def __init__(self, store: Path, mode: str = "good") -> None:
        self.store = Path(store)
        self.mode = mode
        self.modes_by_hex: dict[str, str] = {}
        self.slow_s = 5.0
        self.hits: Counter[str] = Counter()
        self.lt: LoopThread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/store"

    def object_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if " objects/" in p)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["rel"]
        self.hits[f"{request.method} {rel}"] += 1
        path = self.store / rel
        if ".." in rel.split("/") or not path.is_file():
            raise web.HTTPNotFound()
        data = path.read_bytes()
        mode = self.mode
        if rel.startswith("objects/"):
            mode = self.modes_by_hex.get(rel.replace("objects/", "").replace("/", ""), mode)
        else:
            mode = "good" if mode in ("wrong", "truncate", "endless") else mode
        if mode == "500":
            raise web.HTTPInternalServerError()
        if mode == "404":
            raise web.HTTPNotFound()
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        if mode == "wrong":
            data = bytes(b ^ 0x5A for b in data)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        if mode == "truncate":
            resp = web.StreamResponse()
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        if mode == "endless":
            resp = web.StreamResponse()
            await resp.prepare(request)
            chunk = data[:65536] or b"x" * 65536
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while True:
                    await resp.write(chunk)
            return resp
        return web.Response(body=data, content_type="application/octet-stream")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/store/{rel:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self, port: int = 0) -> Hostile:
        self.lt = LoopThread()
        self.port = port
        self.lt.run(self._start())
        return self

    def stop(self) -> None:
        if self.lt is None:
            return
        with contextlib.suppress(Exception):
            self.lt.run(self.runner.cleanup(), 15)
        self.lt.stop()
        self.lt = None


# -- raw TCP servers -------------------------------------------------------------------
class _TCP:
    def __init__(self) -> None:
        self.lt: LoopThread | None = None
        self.port = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader, writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _wrapped(self, reader, writer) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._wrapped, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def start(self):
        self.lt = LoopThread()
        self.lt.run(self._start())
        return self

    async def _stop(self) -> None:
        self.server.close()
        for w in list(self._writers):
            w.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self.lt is None:
            return
        with contextlib.suppress(Exception):
            self.lt.run(self._stop(), 15)
        self.lt.stop()
        self.lt = None


class Silent(_TCP):
    """Accepts connections and stays silent until stopped."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/store"

    async def _serve(self, reader, writer) -> None:
        await asyncio.Event().wait()


class ForwardProxy(_TCP):
    """An HTTP forward proxy for ``http://`` URLs: one request per connection, counted."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        self.requests.append(f"{method} {target}")
        assert target.startswith("http://"), target
        hostport, _, path = target[len("http://"):].partition("/")
        host, _, port = hostport.partition(":")
        up_r, up_w = await asyncio.open_connection(host, int(port or 80))
        keep = [ln for ln in lines[1:] if ln and not ln.lower().startswith(
            ("connection:", "proxy-connection:", "keep-alive:"))]
        up_w.write((f"{method} /{path} {version}\r\n" + "\r\n".join(keep)
                    + "\r\nConnection: close\r\n\r\n").encode("latin-1"))
        await up_w.drain()
        try:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            up_w.close()


class LatencyProxy(_TCP):
    """Forwards TCP to ``target_port``, delaying each chunk ``delay`` s each way."""

    def __init__(self, target_port: int, delay: float) -> None:
        super().__init__()
        self.target_port = target_port
        self.delay = delay

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, src, dst) -> None:
        q: asyncio.Queue = asyncio.Queue()

        async def later() -> None:
            while True:
                due, data = await q.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(later())
        try:
            while True:
                data = await src.read(65536)
                q.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def _serve(self, reader, writer) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            up_w.close()


# -- squid -----------------------------------------------------------------------------
class Squid:
    """Debian's ``squid -N`` as a caching forward proxy at ``url`` (loopback only).

    Memory cache only (``cache_mem``, no ``cache_dir``): nothing to initialise with
    ``squid -z`` (which forks and takes seconds), nothing left on disk, and a test's
    objects fit in memory.  ``refresh_pattern`` has no override options, so the
    origin's ``Cache-Control`` decides (objects: a year; release index: revalidate).

    Squid refuses to run as root and switches to ``cache_effective_user`` before it
    opens its logs, which then cannot reach a work folder inside a 0700 tree (pytest's
    tmp).  So, as root, it is started as user ``proxy`` by ``setpriv`` with
    CAP_DAC_OVERRIDE kept: it can write its files in ``workdir`` wherever that is, and
    binds 127.0.0.1 only.  A unique ``-n`` service name keeps its shared-memory
    segments (``/dev/shm/<name>-*``) apart from any other squid; squid removes them
    when it exits on SIGTERM.
    """

    HIT_CODES = ("HIT", "REFRESH_UNMODIFIED", "REFRESH_IGNORED", "REFRESH_FAIL_OLD",
                 "IMS_HIT", "INM_HIT", "NEGATIVE_HIT", "MEM_HIT", "OFFLINE_HIT", "STALE_HIT")

    def __init__(self, workdir: Path, *, cache_mb: int = 256, max_object_mb: int = 64) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache_mb = cache_mb
        self.max_object_mb = max_object_mb
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.service = f"cassq{os.getpid()}x{id(self) & 0xFFFFFF:x}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Squid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _conf(self) -> str:
        d = self.dir
        return f"""
http_port 127.0.0.1:{self.port}
pid_filename {d}/squid.pid
cache_log {d}/cache.log
logformat casstore %ts.%03tu %Ss/%03>Hs %<st %<bs %rm %ru %Sh
access_log stdio:{d}/access.log casstore
cache_store_log none
logfile_rotate 0
coredump_dir {d}
netdb_filename none
pinger_enable off
icp_port 0
htcp_port 0
cache_mem {self.cache_mb} MB
maximum_object_size_in_memory {self.max_object_mb} MB
maximum_object_size {self.max_object_mb} MB
memory_replacement_policy lru
refresh_pattern . 0 20% 4320
http_access allow localhost
http_access deny all
buffered_logs off
shutdown_lifetime 1 seconds
"""

    def _argv(self, conf: Path) -> list[str]:
        cmd = [SQUID, "-N", "-n", self.service, "-f", str(conf)]
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=proxy", "--regid=proxy", "--clear-groups",
                "--inh-caps=+dac_override", "--ambient-caps=+dac_override", *cmd]

    def start(self, port: int = 0) -> Squid:
        """Start on ``port``, else on a free one (again on another if it was taken)."""
        for _attempt in range(5):
            self.port = port or free_port()
            conf = self.dir / "squid.conf"
            conf.write_text(self._conf())
            self.proc = subprocess.Popen(self._argv(conf), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready(60.0):
                return self
            self.stop()  # exited (port taken) or never listened: try another port
        raise RuntimeError(f"squid did not start: {self._log_tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.dir / "cache.log").read_text().splitlines()[-10:])
        except OSError:
            return "(no cache.log)"

    def stop(self) -> None:
        """SIGTERM to the squid this object started (by PID), and wait for it."""
        terminate(self.proc)
        self.proc = None

    def log_lines(self) -> list[list[str]]:
        """Access-log records: [time, code/status, to_client, from_origin, method, url,
        hierarchy], without the readiness probes' empty connections (method ``-``)."""
        try:
            lines = (self.dir / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        recs = [ln.split() for ln in lines]
        return [r for r in recs if len(r) >= 7 and r[4] != "-"]

    def access_counts(self, contains: str = "") -> dict[str, int]:
        """Requests, hits, misses, reply bytes served from cache (hits, headers
        included) and body bytes fetched from the origin, over the access-log records
        whose URL contains ``contains``.  Squid writes a record when a request ends,
        which may be just after the client has its last byte: poll for a count."""
        out = {"requests": 0, "hits": 0, "misses": 0, "bytes_from_cache": 0,
               "bytes_from_origin": 0}
        for rec in self.log_lines():
            if contains not in rec[5]:
                continue
            code = rec[1].split("/")[0].removesuffix("_ABORTED").removesuffix("_TIMEDOUT")
            out["requests"] += 1
            hit = code.startswith("TCP_") and code[4:] in self.HIT_CODES
            out["hits" if hit else "misses"] += 1
            if hit:
                out["bytes_from_cache"] += _int(rec[2])
            out["bytes_from_origin"] += _int(rec[3])
        return out


def _int(field: str) -> int:
    return int(field) if field.isdigit() else 0
