"""Status files: what a daemon serves, its cache and its errors, for ``cas status``.

One JSON file per mount in the config's ``run_dir``, named after the mount point
and the mount namespace (several ``cas exec`` namespaces may mount the same path).
The daemon rewrites it every 0.5 s for its first 5 s, then every 1 s, and at once
after an error, so ``cas status`` is current.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from casstore.config import ClientConfig
from casstore.errors import MountError
from casstore.fsutil import atomic_write
from fuseclient.mounttable import canon, is_mounted, mount_ns, set_read_ahead
from fuseclient.watchdog import WORKER_SIGNALS, alive

log = logging.getLogger("casstore.mount")
READ_AHEAD_KB = 1024
FAST_TICKS = 10  # ticks at 0.5 s (the readahead knob appears shortly after INIT)


def status_path(cfg: ClientConfig, mountpoint: Path) -> Path:
    """``<quoted mountpoint>@<mount namespace>.json``: one per mount, even when several
    private namespaces (``cas exec``) mount the same path with the same config."""
    return cfg.run_dir / f"{quote(str(canon(mountpoint)), safe='')}@{mount_ns()}.json"


def log_path(cfg: ClientConfig, mountpoint: Path) -> Path:
    """One log per mount point path, shared by namespaces (every line has the pid)."""
    return cfg.run_dir / (quote(str(canon(mountpoint)), safe="") + ".log")


def prune_stale(cfg: ClientConfig, max_age_s: float = 600.0) -> None:
    """Remove status files of daemons that died without cleaning up (e.g. SIGKILL).

    A live daemon rewrites its file at least every second, so a file untouched
    for ``max_age_s`` whose pid is gone is safe to remove."""
    now = time.time()
    for path in cfg.run_dir.glob("*.json"):
        try:
            if now - path.stat().st_mtime < max_age_s:
                continue
            pid = int(json.loads(path.read_text()).get("pid", 0))
        except (OSError, ValueError):
            continue
        if not alive(pid):
            path.unlink(missing_ok=True)


def read_status(cfg: ClientConfig, mountpoint: Path) -> dict:
    """The daemon's status file plus whether the mount and the process are alive."""
    path = status_path(cfg, mountpoint)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MountError(f"no casstore status for {mountpoint} (not mounted by cas?)") from None
    data["mounted"] = is_mounted(mountpoint)
    data["alive"] = alive(int(data.get("pid", 0)))
    return data


def status_pid(cfg: ClientConfig, mountpoint: Path) -> int:
    try:
        return int(json.loads(status_path(cfg, mountpoint).read_text()).get("pid", 0))
    except (OSError, ValueError):
        return 0


class StatusWriter:
    """A thread that rewrites the status file (and raises the mount's readahead).

    ``snapshot`` returns the live part (cache, errors, known-bad objects); it is
    given by the wiring, so this module knows nothing of how the fs is built.
    """

    def __init__(self, path: Path, base: dict, snapshot: Callable[[], dict],
                 mountpoint: Path) -> None:
        self.path, self.base, self._snapshot = path, base, snapshot
        self.mountpoint = mountpoint
        self.stop = threading.Event()
        self.wake = threading.Event()

    def snapshot(self) -> dict:
        return {**self.base, "pid": os.getpid(), "updated": int(time.time()),
                **self._snapshot()}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.snapshot(), indent=1, sort_keys=True).encode()
        atomic_write(self.path, data, self.path.parent, durable=False)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="status").start()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        for tick in range(sys.maxsize):
            if tick < FAST_TICKS:
                set_read_ahead(self.mountpoint, READ_AHEAD_KB)
            try:
                self.write()
            except OSError as exc:
                log.warning("cannot write status file %s: %s", self.path, exc)
            self.wake.wait(0.5 if tick < FAST_TICKS else 1.0)
            self.wake.clear()
            if self.stop.is_set():
                return

    def poke(self) -> None:
        """Rewrite the status soon (called on errors, so `cas status` is current)."""
        self.wake.set()
