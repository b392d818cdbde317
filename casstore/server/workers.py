"""Running the app: one process, or N forked workers sharing one listening socket.

Python spends several times nginx's CPU per small request, so, like nginx's
``worker_processes``, ``cas serve --workers N`` (default: the cores this process may
use) forks N processes that accept on the same socket (bound once by the parent, so
port 0 and the printed address stay right).  Workers share nothing but the socket
and the store on disk: each opens its own LMDB index lazily, after the fork.  A
worker that dies is replaced, as nginx's master does; only one that keeps dying
within seconds of its start stops the server.  ``/metrics`` adds up every worker's
counters through prometheus-client's multiprocess mode (a private temporary folder,
set before prometheus-client is imported, removed at exit).

The supervisor is ours rather than gunicorn's: gunicorn would be one more
dependency and one more configuration language for the same ~50 lines (fork,
replace, stop), and it binds its own socket, which loses the printed port-0 address.

Stopping: SIGTERM or SIGINT closes the listener, lets requests in flight finish for
up to :data:`GRACE` seconds, and then the process ends whatever its threads are
doing (a thread stuck in a read cannot keep it alive); the parent kills a worker
that is still there after :data:`STOP_DEADLINE`.
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
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GRACE = 3.0  # s for requests in flight after SIGTERM
STOP_DEADLINE = 4.5  # s after SIGTERM when a process ends regardless
CRASH_WINDOW = 5.0  # s: a worker dying this soon after its start counts as a crash loop
MAX_QUICK_DEATHS = 5


@dataclass(frozen=True)
class Limits:
    """Per-worker connection limits (see :mod:`casstore.server.conncap`)."""

    per_client: int = 256  # open connections of one client address
    idle_timeout: float = 15.0  # s idle, or to send a request head


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity), as nginx's ``auto``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    sock = socket.create_server((host, port), family=family, backlog=4096)
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _hard_deadline() -> None:
    """From now on, end the process after STOP_DEADLINE whatever is still running."""
    def end() -> None:
        sys.stderr.flush()
        os._exit(0)
    timer = threading.Timer(STOP_DEADLINE, end)
    timer.daemon = True
    timer.start()


async def _worker(make_app: Callable[[], web.Application], sock: socket.socket,
                  access_log: bool, limits: Limits) -> None:
    from casstore.server.conncap import Caps, capped, handler_factory
    from casstore.server.metrics import METRICS, handler_args

    app = make_app()
    args = handler_args(app, access_log, limits.idle_timeout)
    runner = web.AppRunner(app, shutdown_timeout=GRACE, **args)
    await runner.setup()
    metrics = app[METRICS]
    caps = Caps(per_client=limits.per_client, refused=lambda why: metrics.refused.labels(why).inc())
    loop = asyncio.get_running_loop()
    assert runner.server is not None  # set by setup()
    make = handler_factory(runner.server, loop, args)
    server = await loop.create_server(capped(caps, make), sock=sock,
                                      backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        _hard_deadline()
        server.close()
        try:  # requests in flight get GRACE seconds (the runner's shutdown_timeout)
            await asyncio.wait_for(runner.cleanup(), GRACE + 0.5)
        except TimeoutError:
            pass


def run_worker(make_app: Callable[[], web.Application], sock: socket.socket, access_log: bool,
               loop_factory: Callable | None, limits: Limits) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_worker(make_app, sock, access_log, limits))


def _fork_worker(make_app: Callable[[], web.Application], sock: socket.socket,
                 access_log: bool, loop_factory: Callable | None, limits: Limits) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0  # the worker: serve, then leave without running the parent's exits
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        run_worker(make_app, sock, access_log, loop_factory, limits)
    except BaseException:  # noqa: BLE001 - logged by the worker's loggers
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve(make_app: Callable[[], web.Application], sock: socket.socket, workers: int,
          access_log: bool, loop_factory: Callable | None, ready: Callable[[], None],
          metrics_dir: str | None, limits: Limits | None = None) -> bool:
    """Serve until SIGTERM or SIGINT; False if it stopped because workers kept dying."""
    limits = limits or Limits()
    if workers <= 1:
        ready()
        run_worker(make_app, sock, access_log, loop_factory, limits)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)  # never wait on a thread stuck in a read (see _hard_deadline)
    children: dict[int, float] = {}
    clean = True
    stop = threading.Event()
    quick_deaths: list[float] = []

    def start_one() -> None:
        pid = _fork_worker(make_app, sock, access_log, loop_factory, limits)
        children[pid] = time.monotonic()

    try:
        for _ in range(workers):
            start_one()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        ready()
        while not stop.is_set():
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                stop.wait(0.2)
                continue
            started = children.pop(pid, None)
            if started is None:
                continue
            now = time.monotonic()
            why = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit code {os.WEXITSTATUS(status)}")
            if now - started < CRASH_WINDOW:
                quick_deaths[:] = [t for t in quick_deaths if now - t < 60] + [now]
                if len(quick_deaths) >= MAX_QUICK_DEATHS:
                    print(f"cas serve: workers keep dying at start ({why}); stopping",
                          file=sys.stderr, flush=True)
                    clean = False
                    break
            print(f"cas serve: a worker (pid {pid}) stopped ({why}); starting another",
                  file=sys.stderr, flush=True)
            start_one()
    finally:
        _stop_children(list(children))
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return clean


def _stop_children(pids: list[int]) -> None:
    """SIGTERM each worker; SIGKILL one still there after STOP_DEADLINE + 0.5 s."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_DEADLINE + 0.5
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] != 0:
                    left.discard(pid)
            except ChildProcessError:
                left.discard(pid)
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
