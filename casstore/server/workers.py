"""Running the app: one process, or N forked workers sharing one listening socket.

Python spends several times nginx's CPU per small request, so, like nginx's
``worker_processes``, ``cas serve --workers N`` forks N processes that accept on the
same socket (bound once by the parent, so port 0 and the printed address stay
right).  Workers share nothing but the socket and the store on disk: each opens its
own LMDB index lazily, after the fork.  ``/metrics`` then adds up every worker's
counters through prometheus-client's multiprocess mode (a private temporary folder,
set before prometheus-client is imported, removed at exit).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable

from aiohttp import web

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess(workers: int) -> str | None:
    """Call before anything imports prometheus_client: the metrics folder, or None."""
    if workers <= 1:
        return None
    if "prometheus_client" in sys.modules and MULTIPROC_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before the metrics folder was set")
    folder = tempfile.mkdtemp(prefix="cas-serve-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def _worker(make_app: Callable[[], web.Application], sock: socket.socket,
                  access_log: bool) -> None:
    from casstore.server.metrics import make_runner

    runner = make_runner(make_app(), access_log)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=5).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_worker(make_app: Callable[[], web.Application], sock: socket.socket, access_log: bool,
               loop_factory: Callable | None) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_worker(make_app, sock, access_log))


def serve(make_app: Callable[[], web.Application], sock: socket.socket, workers: int,
          access_log: bool, loop_factory: Callable | None, ready: Callable[[], None],
          metrics_dir: str | None) -> bool:
    """Serve until SIGTERM or SIGINT; False if it stopped because a worker died."""
    if workers <= 1:
        ready()
        run_worker(make_app, sock, access_log, loop_factory)
        return True
    children: list[int] = []
    clean = True
    stop = threading.Event()
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: serve, then leave without running the parent's exits
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    run_worker(make_app, sock, access_log, loop_factory)
                except BaseException:  # noqa: BLE001 - logged by the worker's loggers
                    code = 1
                finally:
                    os._exit(code)
            children.append(pid)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        ready()
        while not stop.is_set():
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid != 0:
                children.remove(pid)
                print(f"cas serve: a worker (pid {pid}) stopped; stopping", file=sys.stderr)
                clean = False
                break
            stop.wait(0.5)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return clean
