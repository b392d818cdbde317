"""Unmounting a casstore mount: its own small module, so that ``cas umount`` (and
``cas exec``'s unmount) do not import the FUSE stack, the view or the metrics."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from casstore.client.config import ClientConfig
from casstore.client.mounttable import CAS_FSTYPE, canon, fstype
from casstore.client.status import status_path, status_pid
from casstore.client.watchdog import alive
from casstore.errors import MountError, NotACasMount


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
