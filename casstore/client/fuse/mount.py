"""Mounting a release: serve it over FUSE until unmounted, and unmount it.

The other jobs live in their own modules: choosing and verifying the release
(:mod:`casstore.client.selection`), building the fs (:mod:`casstore.client.fuse.wiring`), status
files (:mod:`casstore.client.status`), the mount table (:mod:`casstore.client.mounttable`),
the owner watchdog (:mod:`casstore.client.watchdog`) and the getattr fast path
(:mod:`casstore.client.fuse.fastpath`).

The daemon runs libfuse3 single-threaded with ``kernel_cache`` and day-long
entry/attr/negative timeouts (content is immutable), mounted ``ro`` and
``allow_other``.  In daemon mode libfuse forks after the mount exists, so a zero
exit of ``cas mount`` means the mount is there.  SIGTERM/SIGINT/SIGHUP end the
loop through libfuse's own handlers and unmount cleanly; worker threads block
those signals so they always reach the loop's thread.

A following mount (``follow``, :mod:`casstore.client.follow`) differs in three ways:
SIGHUP asks for a check instead of unmounting (every thread blocks it, the
follow thread waits for it with ``sigtimedwait``); opens are real (each handle
keeps its revision; no "no_open", no blanket ``kernel_cache``: the page cache is
kept or dropped per open by :meth:`casstore.client.fuse.fs.ReleaseFS.open`); and the
kernel's entry/attr and negative timeouts are the short ones of its
:class:`~casstore.client.follow.FollowPolicy`, while paths whose node changed are
invalidated in the kernel at each switch.  The policy is decided by the caller
(:func:`casstore.client.follow.follow_policy`); the daemon only applies it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from pathlib import Path

from casstore.client.config import ClientConfig
from casstore.client.exporters import Exporters, mount_id
from casstore.client.follow import PINNED, Follower, FollowPolicy
from casstore.client.fuse.daemonlog import setup_logging
from casstore.client.fuse.fastpath import fast_getattr_ok, fuse_class
from casstore.client.fuse.unmount import unmount
from casstore.client.fuse.wiring import Built, attach_metrics, build_fs, switch_fs
from casstore.client.mounttable import canon, is_mounted, mount_ns
from casstore.client.selection import Selection
from casstore.client.status import (
    StatusWriter,
    log_path,
    prune_stale,
    read_status,
    status_path,
)
from casstore.client.watchdog import OWNER_ENV, OwnerWatchdog, alive, owner_from_env
from casstore.errors import MountError

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
log = logging.getLogger(__name__)

__all__ = ["OWNER_ENV", "alive", "canon", "fast_getattr_ok", "fuse_class",
           "is_mounted", "mount_ns", "preflight", "prune_stale", "read_status", "serve",
           "status_path", "unmount"]


class KernelCache:
    """Tells the kernel to forget what it cached for paths (libfuse's
    ``fuse_invalidate_path``: attributes and page cache of the path's inode).

    The ``struct fuse`` pointer is taken in ``init`` (the loop's thread); calls
    come from the follow thread, never from a FUSE callback (that would deadlock).
    """

    def __init__(self) -> None:
        self._fuse: int | None = None
        self._fn = None

    def capture(self) -> None:
        import mfusepy

        lib = mfusepy._libfuse
        fn = getattr(lib, "fuse_invalidate_path", None)
        if fn is None:  # libfuse older than 3.1: the short timeouts still bound staleness
            log.warning("libfuse has no fuse_invalidate_path; relying on kernel timeouts")
            return
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
        self._fn, self._fuse = fn, lib.fuse_get_context().contents.fuse

    def invalidate(self, paths: list[str]) -> int:
        """Invalidate each path the kernel knows; returns how many it knew."""
        if self._fn is None or not self._fuse:
            return 0
        known = 0
        for path in paths:
            known += self._fn(self._fuse, os.fsencode(path)) == 0
        return known


class Detacher:
    """Moves the kernel inodes of open files whose content a switch replaces out of
    the way, by renaming them (on the mount, from the follow thread) to
    ``/.cas-detached-<revision>-<n>``; ``CasOps.rename`` accepts exactly these
    renames from exactly this thread.  libfuse's high-level API names inodes by
    path, so the next lookup of the path then makes a fresh inode, with its own
    page cache and size: old handles and mappings keep the old inode, new opens
    never share pages with them.  Failing that, ReleaseFS.open's page-cache policy
    still keeps their bytes apart (docs/CLIENT.md, "Kernel caches")."""

    def __init__(self, ops, mountpoint: Path) -> None:
        self.ops, self.mountpoint = ops, mountpoint
        self.n = 0

    def __call__(self, paths: list[str], revision: int = 0) -> None:
        from casstore.client.fuse.ops import DETACHED_PREFIX

        self.ops.detach_tid = threading.get_native_id()
        try:
            for path in paths:
                self.n += 1
                target = f"{DETACHED_PREFIX}{revision}-{self.n}"
                try:
                    os.rename(f"{self.mountpoint}{path}", f"{self.mountpoint}{target}")
                    log.info("detached %s (open; revision %d replaces it)", path, revision)
                except OSError as exc:
                    log.warning("cannot detach open file %s: %s", path, exc)
        finally:
            self.ops.detach_tid = 0


def _fuse_options(policy: FollowPolicy) -> dict:
    """A following mount is not ``ro`` at the kernel (Detacher renames; every other
    change is refused by CasOps) and keeps no blanket kernel_cache (per open)."""
    return {"ro": not policy.follow, "kernel_cache": not policy.follow, "use_ino": True,
            "entry_timeout": policy.entry_timeout, "attr_timeout": policy.entry_timeout,
            "negative_timeout": policy.negative_timeout}


def _start_follower(follower: Follower, stop: threading.Event) -> None:
    """The follow thread: a check every ttl, or at once on SIGHUP (blocked in every
    thread since before the fork, so only this thread's sigtimedwait takes it)."""

    def wait(seconds: float) -> None:
        signal.sigtimedwait({signal.SIGHUP}, seconds)

    threading.Thread(target=follower.run, args=(wait, stop), daemon=True,
                     name="follow").start()


def _make_follower(p: Selection, cfg: ClientConfig, built: Built, policy: FollowPolicy,
                   arch: str | None, kernel: KernelCache, detacher: Detacher,
                   on_change) -> Follower:
    def apply(new: Selection) -> None:
        changed = switch_fs(built, new,
                            lambda paths: detacher(paths, new.release.revision))
        known = kernel.invalidate(changed)
        log.info("revision %d: %d changed paths known to the daemon, %d invalidated in "
                 "the kernel", new.release.revision, len(changed), known)

    return Follower(p, cfg, apply, arch, on_change, ttl=policy.ttl)


def serve(p: Selection, cfg: ClientConfig, mountpoint: Path, foreground: bool,
          record_to: Path | None = None, prefetch: bool = True,
          policy: FollowPolicy = PINNED, arch: str | None = None,
          fsname: str | None = None) -> None:
    """Mount and run the FUSE loop until unmounted or signalled.

    ``prefetch``: replay the release's prefetch list for the chosen level once the
    mount exists (concurrently with the first reads).  ``record_to``: note every
    path served and write the record there at unmount (``cas depot build``).
    ``policy``: whether to check for new revisions (every ``policy.ttl`` and on
    SIGHUP) and switch to them (:mod:`casstore.client.follow`), and the kernel
    timeouts; ``arch`` is the forced level to keep.  ``fsname``: the source shown
    in the mount table (default ``cas:NAME``)."""
    from casstore.client.fuse.ops import CasOps

    mountpoint = canon(mountpoint)
    check_mountpoint(mountpoint)
    spath = status_path(cfg, mountpoint)
    follow = policy.follow
    # refuses an unsafe cache folder before anything is mounted
    built = build_fs(p, cfg, record=record_to is not None,
                     prefetch=prefetch and record_to is None)
    logs_to = setup_logging(cfg, mountpoint, log_path(cfg, mountpoint), foreground)
    prune_stale(cfg)
    base = {"release": p.release.name, "revision": p.release.revision, "variant": p.level,
            "variant_choice": p.how, "root": p.release.root, "mountpoint": str(mountpoint),
            "source": str(p.source_path), "started": int(time.time()),
            "offline": p.offline or None,  # "offline: using the last verified release ..."
            "following": follow}
    ops = CasOps(built.fs, follow=follow)
    # Metrics (built.metrics: set_revision / check_succeeded) and where they go.
    metrics = attach_metrics(built, p, str(mountpoint), lambda: ops.errors)
    export = Exporters.from_config(metrics, cfg, mount_id(str(mountpoint), mount_ns()))
    base.update(log=logs_to, metrics=export.describe() or None)
    kernel = KernelCache()
    holder: list[Follower] = []

    def live() -> dict:
        out = {"cache": built.cache.summary(), "errors": dict(ops.errors),
               "bad_objects": built.bad.summary(),
               "prefetch": built.replay.summary() if built.replay else {"state": "off"}}
        if holder:  # the revision now served, and the follow checks (casstore.client.follow)
            f = holder[0]
            out.update(revision=f.revision, variant=f.sel.level, root=f.sel.release.root,
                       follow=f.state.summary(), open_files=built.fs.open_handles())
        return out

    writer = StatusWriter(spath, base, live, mountpoint)
    if follow:
        def changed() -> None:  # after every check: status file and metrics
            st = holder[0].state
            metrics.set_revision(st.revision)
            if st.last_ok is not None:
                metrics.check_succeeded(st.last_ok)
            writer.poke()

        holder.append(_make_follower(p, cfg, built, policy, arch, kernel,
                                     Detacher(ops, mountpoint), changed))
    watchdog = OwnerWatchdog(owner_from_env(), mountpoint)
    stop_follow = threading.Event()

    def on_init() -> None:
        writer.start()
        export.start()
        watchdog.start()
        if built.replay is not None:  # threads only now: the daemon has forked
            built.replay.start()
        if holder:
            kernel.capture()
            _start_follower(holder[0], stop_follow)

    ops._on_init = on_init
    ops.on_error = writer.poke
    writer.write()
    log.info("mounting %s revision %d (variant %s) at %s%s", p.release.name,
             p.release.revision, p.level, mountpoint,
             f", following every {policy.ttl:g} s" if follow
             else f", not following ({policy.why})")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}) if follow else None
    if not foreground:
        _before_daemonising(p)
    try:
        fuse_class()(ops, str(mountpoint), foreground=foreground, nothreads=True,
                     allow_other=True, default_permissions=True, **_fuse_options(policy),
                     fsname=fsname or f"cas:{p.release.name}", subtype="cas")
    except RuntimeError as exc:
        # libfuse also reports a loop ended by SIGTERM/SIGINT as an error: that is a
        # clean stop once the kernel had initialised the mount.
        if not ops.initialised:
            raise MountError(f"mounting {mountpoint} failed (libfuse error {exc})") from None
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        stop_follow.set()
        writer.stop.set()
        writer.wake.set()
        watchdog.stop.set()
        if built.replay is not None:
            built.replay.stop.set()
        if built.recorder is not None and record_to is not None:
            _save_record(built.recorder, record_to)
        export.stop()  # the final metrics, before unmount() sees the status file go
        # Writers into cache_dir end before unmount() returns (it waits for the status
        # file to go): a caller may delete the cache folder then (cas depot build did).
        built.cache.close()
        if built.replay is not None and built.replay.thread is not None:
            built.replay.thread.join(timeout=10)
        spath.unlink(missing_ok=True)  # after the record: unmount() waits for this
    log.info("unmounted %s", mountpoint)
    if not foreground:
        _exit_daemon()


def _exit_daemon() -> None:
    """End a daemonised mount at once: its state is on disk and its files are closed,
    and tearing down the interpreter's modules would only cost CPU (about 0.3 s on
    a loaded node) after ``cas umount`` has returned, beside the next job."""
    logging.shutdown()
    os._exit(0)


def _before_daemonising(p: Selection) -> None:
    """libfuse forks in C to daemonise: Python never learns that the parent's threads
    are gone in the child, and at exit it would wait for them for ever (a leaked daemon
    per mount).  So the parent stops them first; the child starts its own."""
    from casstore.sources import suspend_threads

    suspend_threads(p.source)
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        log.warning("threads alive before daemonising (the daemon may not exit): %s",
                    ", ".join(others))


def _save_record(recorder, path: Path) -> None:
    try:
        recorder.save(path)
        log.info("wrote %d accessed paths to %s", len(recorder.accesses()), path)
    except OSError as exc:
        log.error("cannot write the access record %s: %s", path, exc)


FUSE_DEVICE = Path("/dev/fuse")
FUSE_CONF = Path("/etc/fuse.conf")


def preflight() -> None:
    """What mounting needs from the host, checked before anything else so the error
    names the fix: a usable /dev/fuse, and root (the mount serves every user of the
    node: ``allow_other``), unless fuse.conf grants ``user_allow_other``."""
    if os.geteuid() != 0 and not _user_allow_other():
        raise MountError("mounting needs root: the mount serves every user of the node "
                         "(allow_other); run it as root (sudo cas mount ...), or from "
                         "/etc/fstab with mount(8); 'user_allow_other' in /etc/fuse.conf "
                         "lets other users mount")
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        why = ("does not exist" if not FUSE_DEVICE.exists()
               else "cannot be opened for reading and writing by this user")
        raise MountError(f"{FUSE_DEVICE} {why}: load the fuse module (modprobe fuse) or "
                         "install fuse3; in a container, pass the device (e.g. docker run "
                         "--device /dev/fuse --cap-add SYS_ADMIN)")


def _user_allow_other() -> bool:
    try:
        lines = FUSE_CONF.read_text().splitlines()
    except OSError:
        return False
    return any(line.split("#")[0].strip() == "user_allow_other" for line in lines)


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
