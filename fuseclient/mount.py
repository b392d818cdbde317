"""Mounting a release: verify, choose the variant, serve, report status, unmount.

Order matters: the release is verified (signature, trusted key, expiry, rollback)
and the CPU level chosen *before* anything is mounted, so every refusal is a
distinct :class:`CasError` with its own exit code and nothing is left behind.

The daemon runs libfuse3 single-threaded with ``kernel_cache`` and hour-long
entry/attr/negative timeouts (content is immutable), mounted ``ro`` and
``allow_other``.  In daemon mode libfuse forks after the mount exists, so a zero
exit of ``cas mount`` means the mount is there.  SIGTERM/SIGINT/SIGHUP end the
loop through libfuse's own handlers and unmount cleanly; worker threads block
those signals so they always reach the loop's thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from casstore.cache import FileCache, GuardedReader, KnownBad
from casstore.config import ClientConfig
from casstore.errors import KeyFileError, MountError
from casstore.fsutil import atomic_write
from casstore.releases import Release, SeenRevisions, load_verified
from casstore.remote import LocalSource, ObjectSource
from casstore.variants import MergedView, choose
from fuseclient.fs import MountInfo, ReleaseFS

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
log = logging.getLogger("casstore.mount")
TIMEOUT_S = 86400.0
READ_AHEAD_KB = 1024
WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass
class Prepared:
    """A verified release and everything needed to serve it."""

    release: Release
    level: str | None
    how: str  # "forced", "config" or "detected"
    source: ObjectSource
    source_path: Path


def prepare(name: str, cfg: ClientConfig, store: Path | None, arch: str | None,
            revision: int | None = None) -> Prepared:
    """Verify the release and pick its variant; raises the distinct release errors."""
    src_path = store or cfg.source
    if src_path is None:
        raise MountError("no source store: give --store or set 'source' in the client config")
    src_path = Path(src_path).resolve()  # the daemon changes directory to /
    source = LocalSource(src_path)
    trusted = cfg.trusted()
    if not trusted:
        raise KeyFileError("no trusted_keys in the client config; refusing to mount anything")
    rel = load_verified(source, name, trusted, SeenRevisions(cfg.seen_path), revision)
    forced = arch or cfg.arch
    how = "forced" if arch else "config" if cfg.arch else "detected"
    level = choose(sorted(rel.variants), rel.baseline, forced)
    return Prepared(rel, level, how, source, Path(src_path))


def build_fs(p: Prepared, cfg: ClientConfig) -> ReleaseFS:
    """The filesystem model for a prepared release (no FUSE involved)."""
    reader = GuardedReader(p.source, KnownBad())
    overlay = p.release.variant_ids().get(p.level) if p.level else None
    view = MergedView(reader, p.release.root_id, overlay, p.level, p.release.created * 10**9)
    cache = FileCache(reader, cfg.cache_dir, cfg.cache_size, cfg.prefetch_min)
    info = MountInfo(p.release.name, p.release.revision, p.level, p.release.root)
    return ReleaseFS(view, info, cache)


# -- status ----------------------------------------------------------------------
def canon(mountpoint: Path) -> Path:
    """An absolute path without stat-ing the mount point itself (it may be broken)."""
    mountpoint = Path(os.path.abspath(mountpoint))
    return Path(os.path.realpath(mountpoint.parent)) / mountpoint.name


def mount_ns() -> str:
    """This process's mount namespace id (the inode of /proc/self/ns/mnt)."""
    try:
        link = os.readlink("/proc/self/ns/mnt")  # "mnt:[4026531841]"
    except OSError:
        return "0"
    return link.partition("[")[2].rstrip("]") or "0"


def status_path(cfg: ClientConfig, mountpoint: Path) -> Path:
    """``<quoted mountpoint>@<mount namespace>.json``: one per mount, even when several
    private namespaces (``cas exec``) mount the same path with the same config."""
    return cfg.run_dir / f"{quote(str(canon(mountpoint)), safe='')}@{mount_ns()}.json"


def log_path(cfg: ClientConfig, mountpoint: Path) -> Path:
    """One log per mount point path, shared by namespaces (every line has the pid)."""
    return cfg.run_dir / (quote(str(canon(mountpoint)), safe="") + ".log")


def prune_stale(cfg: ClientConfig, max_age_s: float = 600.0) -> None:
    """Remove status files of daemons that died without cleaning up (e.g. SIGKILL).

    A live daemon rewrites its file every 2 s, so an old file whose pid is gone
    is safe to remove."""
    now = time.time()
    for path in cfg.run_dir.glob("*.json"):
        try:
            if now - path.stat().st_mtime < max_age_s:
                continue
            pid = int(json.loads(path.read_text()).get("pid", 0))
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)


def is_mounted(mountpoint: Path) -> bool:
    target = str(canon(mountpoint))
    return any(_unescape(line.split()[1]) == target for line in _mount_lines())


def _mount_lines() -> list[str]:
    with open("/proc/self/mounts") as f:
        return f.readlines()


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def read_status(cfg: ClientConfig, mountpoint: Path) -> dict:
    """The daemon's status file plus whether the mount and the process are alive."""
    path = status_path(cfg, mountpoint)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MountError(f"no casstore status for {mountpoint} (not mounted by cas?)") from None
    data["mounted"] = is_mounted(mountpoint)
    data["alive"] = _alive(int(data.get("pid", 0)))
    return data


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours to signal
        return True
    return True


OWNER_ENV = "CAS_MOUNT_OWNER"


class StatusWriter:
    """A thread that rewrites the status file and raises the mount's readahead."""

    def __init__(self, path: Path, base: dict, fs: ReleaseFS, ops, mountpoint: Path) -> None:
        self.path, self.base, self.fs, self.ops = path, base, fs, ops
        self.mountpoint = mountpoint
        self.stop = threading.Event()
        self.wake = threading.Event()
        # `cas exec` names itself as the owner: if it is SIGKILLed, nobody would
        # ever unmount this private mount, so the daemon detaches itself.
        self.owner = int(os.environ.get(OWNER_ENV, "0") or 0)

    def snapshot(self) -> dict:
        cache = self.fs.cache.summary() if self.fs.cache else {}
        bad = getattr(self.fs.view.reader, "bad", None)
        return {**self.base, "pid": os.getpid(), "updated": int(time.time()),
                "cache": cache, "errors": dict(self.ops.errors),
                "bad_objects": bad.summary() if bad is not None else {}}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.snapshot(), indent=1, sort_keys=True).encode()
        atomic_write(self.path, data, self.path.parent, durable=False)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="status").start()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        for tick in range(sys.maxsize):
            if tick < 10:
                set_read_ahead(self.mountpoint, READ_AHEAD_KB)
            try:
                self.write()
            except OSError as exc:
                log.warning("cannot write status file %s: %s", self.path, exc)
            self.wake.wait(0.5 if tick < 10 else 1.0)
            self.wake.clear()
            if self.stop.is_set():
                return
            if self.owner and not _alive(self.owner):
                log.warning("owner process %d is gone: unmounting %s", self.owner,
                            self.mountpoint)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True)
                return

    def poke(self) -> None:
        """Rewrite the status soon (called on errors, so `cas status` is current)."""
        self.wake.set()


def set_read_ahead(mountpoint: Path, kb: int) -> bool:
    """Raise the mount's readahead (the kernel caps it at INIT, so set it after)."""
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if _unescape(parts[4]) == target:
                knob = Path("/sys/class/bdi") / parts[2] / "read_ahead_kb"
                try:
                    if knob.read_text().strip() != str(kb):
                        knob.write_text(str(kb))
                    return True
                except OSError:
                    return False
    return False


# -- serving ---------------------------------------------------------------------
def fast_getattr_ok() -> bool:
    """Does fs.STAT produce exactly what mfusepy's own getattr path would write?"""
    import ctypes

    import mfusepy

    from fuseclient.fs import STAT

    if ctypes.sizeof(mfusepy.c_stat) != STAT.size:
        return False
    attrs = {"st_mode": 0o100644, "st_nlink": 3, "st_size": 70_000, "st_uid": 5,
             "st_gid": 6, "st_blocks": 137, "st_mtime": 1_500_000_000_987_654_321,
             "st_atime": 1_500_000_000_987_654_321, "st_ctime": 1_500_000_000_987_654_321}
    ref = mfusepy.c_stat()
    mfusepy.set_st_attrs(ref, attrs, use_ns=True)
    mine = STAT.pack(0, 0, 3, 0o100644, 5, 6, 0, 0, 70_000, 0, 137,
                     *divmod(1_500_000_000_987_654_321, 10**9) * 3)
    return bytes(ref) == mine


def fuse_class():
    """mfusepy.FUSE, with getattr writing a pre-packed struct stat when that is safe.

    mfusepy fills the struct field by field through ctypes (about 4 us a call);
    one memmove of bytes packed by ``struct`` costs a fraction of that, which
    shows on a cold mount where every stat is a FUSE round trip.
    """
    import ctypes

    import mfusepy

    if not fast_getattr_ok():
        log.info("struct stat layout differs from fuseclient.fs.STAT; using mfusepy getattr")
        return mfusepy.FUSE

    class FastFUSE(mfusepy.FUSE):
        def getattr_fuse_3(self, path, buf, fip):
            if path is None:
                return super().getattr_fuse_3(path, buf, fip)
            packed = self.operations.stat_bytes(path.decode(self.encoding, self.errors))
            ctypes.memmove(buf, packed, len(packed))
            return 0

    return FastFUSE


def setup_logging(log_file: Path, foreground: bool) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")


def serve(p: Prepared, cfg: ClientConfig, mountpoint: Path, foreground: bool) -> None:
    """Mount and run the FUSE loop until unmounted or signalled."""

    from fuseclient.ops import CasOps

    mountpoint = canon(mountpoint)
    check_mountpoint(mountpoint)
    spath = status_path(cfg, mountpoint)
    setup_logging(log_path(cfg, mountpoint), foreground)
    prune_stale(cfg)
    fs = build_fs(p, cfg)
    base = {"release": p.release.name, "revision": p.release.revision, "variant": p.level,
            "variant_choice": p.how, "root": p.release.root, "mountpoint": str(mountpoint),
            "source": str(p.source_path), "started": int(time.time())}
    ops = CasOps(fs)
    writer = StatusWriter(spath, base, fs, ops, mountpoint)
    ops._on_init = writer.start
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
        spath.unlink(missing_ok=True)
        if fs.cache:
            fs.cache.close()
    log.info("unmounted %s", mountpoint)


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")


def unmount(cfg: ClientConfig, mountpoint: Path, lazy: bool = False,
            timeout: float = 10.0) -> None:
    """Unmount, then wait for the daemon to remove its status file and exit."""
    mountpoint = canon(mountpoint)
    if not is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    pid = _status_pid(cfg, mountpoint)
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise MountError(f"unmount of {mountpoint} failed: {res.stderr.strip()}")
    spath = status_path(cfg, mountpoint)
    deadline = time.monotonic() + timeout
    while pid and _alive(pid) and spath.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _status_pid(cfg: ClientConfig, mountpoint: Path) -> int:
    try:
        return int(json.loads(status_path(cfg, mountpoint).read_text()).get("pid", 0))
    except (OSError, ValueError):
        return 0
