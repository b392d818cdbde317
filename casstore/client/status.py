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

from casstore.client.config import ClientConfig
from casstore.client.mounttable import (
    CAS_FSTYPE,
    canon,
    cas_mounts_everywhere,
    fuse_daemon,
    is_mounted,
    mount_ns,
    mounts_of,
    ns_of,
    set_read_ahead,
)
from casstore.client.watchdog import WORKER_SIGNALS, alive, owner_from_env
from casstore.errors import MountError
from casstore.fileio.fsutil import atomic_write

log = logging.getLogger(__name__)
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
        # For `cas status --all` on the host: which namespace, and which `cas exec`
        # (if any) owns this mount.
        self.where = {"mount_ns": mount_ns(), "owner": owner_from_env() or None}

    def snapshot(self) -> dict:
        return {**self.base, "pid": os.getpid(), "updated": int(time.time()),
                **self.where, **self._snapshot()}

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


def all_mounts(cfg: ClientConfig) -> list[dict]:
    """Every casstore mount on the host (``cas status --all``), one dict each.

    Rows come from the status files in ``run_dir`` (any namespace, ``cas exec``
    included), each with ``state``: ``mounted`` (daemon alive in its namespace and
    the mount in that namespace's table), ``not mounted`` (daemon alive, mount not
    (yet or any more) in its table), ``dead`` (a stale file: its daemon is gone),
    or ``damaged`` (the file does not parse).  Then every ``fuse.cas`` mount found
    in any namespace that has no status file here is added with ``status_file: None``
    and ``state``: ``copy`` when its daemon runs in another namespace (a copy of a
    mount taken by a namespace created after it; it keeps the daemon alive), ``no
    daemon`` (root found no process serving it: its reads fail, ENOTCONN), else
    ``mounted`` (another config's mount, or a daemon that lost its file).
    """
    rows, known = [], set()
    folder = cfg.run_dir
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        row = _status_row(path)
        known.add((row.get("mount_ns"), row.get("mountpoint")))
        rows.append(row)
    for ns, (pid, found) in sorted(cas_mounts_everywhere().items()):
        for mp, src, dev in found:
            if (ns, mp) not in known:
                rows.append({"mountpoint": mp, "mount_ns": ns, "release": _release_of(src),
                             "status_file": None, "seen_via_pid": pid, "device": dev,
                             **_judge_unlisted(ns, dev)})
    return rows


def _judge_unlisted(ns: str, dev: str) -> dict:
    """A mount with no status file here: ``copy`` if its daemon runs in another mount
    namespace (a namespace made after the mount took a copy of it, and keeps the
    daemon alive after ``cas umount`` there), else ``mounted`` (another config's)."""
    daemon = fuse_daemon(dev)
    daemon_ns = ns_of(daemon) if daemon else None
    if daemon_ns is not None and daemon_ns != ns:
        return {"state": "copy", "pid": daemon, "daemon_ns": daemon_ns}
    if daemon is None and os.geteuid() == 0:  # root sees every daemon's descriptors
        return {"state": "no daemon", "pid": None}
    return {"state": "mounted", "pid": daemon}


def _release_of(source: str) -> str:
    """The release named by a mount table source: ``cas:NAME`` (``cas mount``), or
    ``NAME``, ``:NAME`` or ``cas:NAME`` as mount(8) was given it; ``@N`` dropped."""
    for prefix in (":", "cas:"):
        source = source.removeprefix(prefix)
    return source.partition("@")[0]


def _status_row(path: Path) -> dict:
    """One status file, judged: is its daemon alive, in its namespace, still mounted?"""
    ns_in_name = path.stem.rpartition("@")[2]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not an object")
        pid = int(data.get("pid") or 0)
    except (OSError, ValueError, TypeError) as exc:
        return {"status_file": str(path), "mount_ns": ns_in_name, "state": "damaged",
                "why": str(exc)[:200]}
    ns = str(data.get("mount_ns") or ns_in_name)
    row = {**data, "status_file": str(path), "mount_ns": ns}
    daemon_ns = ns_of(pid) if pid > 0 else None
    # A reused pid in another namespace is not our daemon.
    live = alive(pid) and (daemon_ns is None or daemon_ns == ns)
    table = mounts_of(pid) if live else None
    mounted = table is not None and any(
        mp == data.get("mountpoint") and kind == CAS_FSTYPE for _src, mp, kind in table)
    row["alive"] = live
    row["mounted"] = mounted
    row["state"] = "mounted" if mounted else "not mounted" if live else "dead"
    return row
