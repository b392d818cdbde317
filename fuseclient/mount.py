"""Mounting a release: serve it over FUSE until unmounted, and unmount it.

The other jobs live in their own modules: choosing and verifying the release
(:mod:`casstore.selection`), building the fs (:mod:`fuseclient.wiring`), status
files (:mod:`fuseclient.status`), the mount table (:mod:`fuseclient.mounttable`),
the owner watchdog (:mod:`fuseclient.watchdog`) and the getattr fast path
(:mod:`fuseclient.fastpath`).  Names other modules import from here stay
importable (``prepare``, ``is_mounted``, ``OWNER_ENV``, ...).

The daemon runs libfuse3 single-threaded with ``kernel_cache`` and day-long
entry/attr/negative timeouts (content is immutable), mounted ``ro`` and
``allow_other``.  In daemon mode libfuse forks after the mount exists, so a zero
exit of ``cas mount`` means the mount is there.  SIGTERM/SIGINT/SIGHUP end the
loop through libfuse's own handlers and unmount cleanly; worker threads block
those signals so they always reach the loop's thread.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

from casstore.config import ClientConfig
from casstore.errors import MountError, NotACasMount
from casstore.metrics import Exporters, mount_id
from casstore.releases import DAY
from casstore.selection import Selection, select
from fuseclient.daemonlog import setup_logging
from fuseclient.fastpath import fast_getattr_ok, fuse_class
from fuseclient.mounttable import CAS_FSTYPE, canon, fstype, is_mounted, mount_ns
from fuseclient.status import (
    StatusWriter,
    log_path,
    prune_stale,
    read_status,
    status_path,
    status_pid,
)
from fuseclient.watchdog import OWNER_ENV, OwnerWatchdog, alive, owner_from_env
from fuseclient.wiring import attach_metrics, build_fs

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
log = logging.getLogger("casstore.mount")
TIMEOUT_S = float(DAY)  # entry/attr/negative timeouts: content never changes

# Kept for callers that still use the old names (casstore.julia, depot_cmd).
Prepared = Selection
prepare = select
__all__ = ["OWNER_ENV", "Prepared", "alive", "canon", "fast_getattr_ok", "fuse_class",
           "is_mounted", "mount_ns", "prepare", "prune_stale", "read_status", "serve",
           "status_path", "unmount"]


def serve(p: Selection, cfg: ClientConfig, mountpoint: Path, foreground: bool,
          record_to: Path | None = None, prefetch: bool = True) -> None:
    """Mount and run the FUSE loop until unmounted or signalled.

    ``prefetch``: replay the release's prefetch list for the chosen level once the
    mount exists (concurrently with the first reads).  ``record_to``: note every
    path served and write the record there at unmount (``cas depot build``)."""
    from fuseclient.ops import CasOps

    mountpoint = canon(mountpoint)
    check_mountpoint(mountpoint)
    spath = status_path(cfg, mountpoint)
    # refuses an unsafe cache folder before anything is mounted
    built = build_fs(p, cfg, record=record_to is not None,
                     prefetch=prefetch and record_to is None)
    logs_to = setup_logging(cfg, mountpoint, log_path(cfg, mountpoint), foreground)
    prune_stale(cfg)
    base = {"release": p.release.name, "revision": p.release.revision, "variant": p.level,
            "variant_choice": p.how, "root": p.release.root, "mountpoint": str(mountpoint),
            "source": str(p.source_path), "started": int(time.time()),
            "offline": p.offline or None}  # "offline: using the last verified release ..."
    ops = CasOps(built.fs)
    # Metrics (built.metrics: set_revision / check_succeeded) and where they go.
    metrics = attach_metrics(built, p, str(mountpoint), lambda: ops.errors)
    export = Exporters.from_config(metrics, cfg, mount_id(str(mountpoint), mount_ns()))
    base.update(log=logs_to, metrics=export.describe() or None)
    writer = StatusWriter(spath, base, lambda: {
        "cache": built.cache.summary(), "errors": dict(ops.errors),
        "bad_objects": built.bad.summary(),
        "prefetch": built.replay.summary() if built.replay else {"state": "off"}}, mountpoint)
    watchdog = OwnerWatchdog(owner_from_env(), mountpoint)

    def on_init() -> None:
        writer.start()
        export.start()
        watchdog.start()
        if built.replay is not None:  # threads only now: the daemon has forked
            built.replay.start()

    ops._on_init = on_init
    ops.on_error = writer.poke
    writer.write()
    log.info("mounting %s revision %d (variant %s) at %s", p.release.name,
             p.release.revision, p.level, mountpoint)
    try:
        fuse_class()(ops, str(mountpoint), foreground=foreground, nothreads=True, ro=True,
                     allow_other=True, default_permissions=True, kernel_cache=True,
                     entry_timeout=TIMEOUT_S, attr_timeout=TIMEOUT_S,
                     negative_timeout=TIMEOUT_S, fsname=f"cas:{p.release.name}",
                     subtype="cas")
    except RuntimeError as exc:
        # libfuse also reports a loop ended by SIGTERM/SIGINT as an error: that is a
        # clean stop once the kernel had initialised the mount.
        if not ops.initialised:
            raise MountError(f"mounting {mountpoint} failed (libfuse error {exc})") from None
    finally:
        writer.stop.set()
        writer.wake.set()
        watchdog.stop.set()
        if built.replay is not None:
            built.replay.stop.set()
        if built.recorder is not None and record_to is not None:
            _save_record(built.recorder, record_to)
        export.stop()  # the final metrics, before unmount() sees the status file go
        spath.unlink(missing_ok=True)  # after the record: unmount() waits for this
        built.cache.close()
    log.info("unmounted %s", mountpoint)


def _save_record(recorder, path: Path) -> None:
    try:
        recorder.save(path)
        log.info("wrote %d accessed paths to %s", len(recorder.accesses()), path)
    except OSError as exc:
        log.error("cannot write the access record %s: %s", path, exc)


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")


def unmount(cfg: ClientConfig, mountpoint: Path, lazy: bool = False,
            timeout: float = 10.0) -> None:
    """Unmount a casstore mount, then wait for its daemon to remove its status file
    and exit.  Anything that is not a casstore FUSE mount is refused."""
    mountpoint = canon(mountpoint)
    kind = fstype(mountpoint)
    if kind is None:
        raise MountError(f"{mountpoint} is not mounted")
    if kind != CAS_FSTYPE:
        raise NotACasMount(f"{mountpoint} is a {kind} mount, not a casstore mount; "
                           "refusing to unmount it")
    pid = status_pid(cfg, mountpoint)
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise MountError(f"unmount of {mountpoint} failed: {res.stderr.strip()}")
    spath = status_path(cfg, mountpoint)
    deadline = time.monotonic() + timeout
    while pid and alive(pid) and spath.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
