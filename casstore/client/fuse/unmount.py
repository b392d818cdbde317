"""Unmounting a casstore mount: its own small module, so that ``cas umount`` (and
``cas exec``'s unmount) do not import the FUSE stack, the view or the metrics.

Success means the daemon has exited.  The daemon is found through the kernel (the
process whose ``/dev/fuse`` descriptor serves the mount's FUSE connection), so no
config is needed; it exits only once no mount namespace holds the mount, so when it
lives on, the error names what holds it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from casstore.client.config import ClientConfig
from casstore.client.mounttable import (
    CAS_FSTYPE,
    canon,
    fstype,
    fuse_daemon,
    mount_dev,
    namespaces_holding,
    open_on,
)
from casstore.client.status import status_pid
from casstore.client.watchdog import alive
from casstore.errors import MountBusy, MountError, NotACasMount, UnmountIncomplete

SHUTDOWN_S = 60.0  # how long a daemon nothing holds may take to exit


def unmount(cfg: ClientConfig, mountpoint: Path, lazy: bool = False,
            timeout: float = 10.0) -> int | None:
    """Unmount a casstore mount and return once its daemon has exited (its PID, or
    None if no daemon could be seen).  Anything that is not a casstore FUSE mount is
    refused.

    The daemon is the process whose ``/dev/fuse`` descriptor serves the mount's
    connection (else the status file's PID).  If it still runs after ``timeout``,
    UnmountIncomplete names what holds it: the other namespaces with a copy of the
    mount (and their processes), or, after a lazy detach, the processes with files
    open on it."""
    mountpoint = canon(mountpoint)
    kind = fstype(mountpoint)
    if kind is None:
        raise MountError(f"{mountpoint} is not mounted")
    if kind != CAS_FSTYPE:
        raise NotACasMount(f"{mountpoint} is a {kind} mount, not a casstore mount; "
                           "refusing to unmount it")
    dev = mount_dev(mountpoint)
    pid = (fuse_daemon(dev) if dev else None) or status_pid(cfg, mountpoint) or None
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        why = res.stderr.strip()
        if "busy" in why:
            raise MountBusy(f"{mountpoint} is busy (files open or a working directory on "
                            "it); close them, or detach now with 'cas umount --lazy' (the "
                            "daemon then exits when the last one closes)")
        raise MountError(f"unmount of {mountpoint} failed: {why}")
    if not _exited(pid, timeout):
        held = namespaces_holding(dev, mountpoint) if dev else {}
        users = open_on(dev) if dev and lazy else []
        # Nothing holds it: the daemon is only slow to finish (e.g. a server that
        # stopped answering), so give it longer before calling it stuck.
        if held or users or not _exited(pid, SHUTDOWN_S):
            raise UnmountIncomplete(_still_held(mountpoint, pid, held, users))
    return pid


def _running(pid: int) -> bool:
    """Alive and not a zombie (a foreground daemon's parent may not have reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return alive(pid)


def _exited(pid: int | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid and _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _still_held(mountpoint: Path, pid: int, held: dict[str, tuple[str, list[int]]],
                users: list[int]) -> str:
    """Why the daemon ``pid`` of the mount still runs, for the user."""
    head = f"{mountpoint} is unmounted here, but its daemon (pid {pid}) still runs: "
    if held:
        parts = [f"mount namespace {ns} has it at {where} (pids "
                 f"{', '.join(map(str, pids[:8]))}{', ...' if len(pids) > 8 else ''})"
                 for ns, (where, pids) in sorted(held.items())]
        first_ns = sorted(held)[0]
        return (head + "; ".join(parts) + f". Unmount it there (nsenter -t "
                f"{held[first_ns][1][0]} -m umount {held[first_ns][0]}) or end those "
                "processes; 'cas status --all' lists such copies")
    if users:
        return head + (f"files on it are still open (pids {', '.join(map(str, users[:8]))}); "
                       "it exits when they are closed")
    return head + (f"nothing holds the mount that this user can see, yet it has not "
                   f"exited within {SHUTDOWN_S:g} s (see its log)")
