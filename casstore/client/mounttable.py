"""The kernel's mount table, as this process sees it (``/proc/self/mounts``).

Used to tell whether a path is mounted, and whether it is a casstore FUSE mount
(fstype ``fuse.cas``) before ``cas umount`` touches it.
"""

from __future__ import annotations

import os
from pathlib import Path

CAS_FSTYPE = "fuse.cas"  # libfuse3 names it fuse.<subtype>; serve() passes subtype="cas"


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


def unescape(field: str) -> str:
    """Undo the octal escapes the kernel writes for space, tab, newline and backslash."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mounts() -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount, in mount order."""
    with open("/proc/self/mounts") as f:
        return [(unescape(p[1]), p[2]) for p in (line.split() for line in f) if len(p) >= 3]


def fstype(mountpoint: Path) -> str | None:
    """The type of the topmost mount at ``mountpoint``, or None if nothing is mounted."""
    target = str(canon(mountpoint))
    found = None
    for where, kind in mounts():
        if where == target:
            found = kind  # a later line is mounted over an earlier one
    return found


def is_mounted(mountpoint: Path) -> bool:
    return fstype(mountpoint) is not None


def set_read_ahead(mountpoint: Path, kb: int) -> bool:
    """Raise the mount's readahead (the kernel caps it at INIT, so set it after)."""
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if unescape(parts[4]) == target:
                knob = Path("/sys/class/bdi") / parts[2] / "read_ahead_kb"
                try:
                    if knob.read_text().strip() != str(kb):
                        knob.write_text(str(kb))
                    return True
                except OSError:
                    return False
    return False


def ns_of(pid: int) -> str | None:
    """Process ``pid``'s mount namespace id, or None if it is gone or not ours to see."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return link.partition("[")[2].rstrip("]") or None


def mounts_of(pid: int | str) -> list[tuple[str, str, str]] | None:
    """(source, mount point, fstype) of every mount in ``pid``'s mount namespace, or
    None if the process is gone (or its table is not readable by us)."""
    try:
        with open(f"/proc/{pid}/mounts") as f:
            rows = [p for p in (line.split() for line in f) if len(p) >= 3]
    except OSError:
        return None
    return [(unescape(p[0]), unescape(p[1]), p[2]) for p in rows]


def cas_mounts_everywhere() -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
    """Every casstore mount on the host, per mount namespace: ``{ns: (a pid in it,
    [(mount point, source, device), ...])}``.

    Private namespaces (``cas exec``) have no path of their own, so one process
    per namespace is found by scanning ``/proc``; its mount table is read once.
    Needs root to see the namespaces of other users' processes."""
    found: dict[str, tuple[int, list[tuple[str, str, str]]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        ns = ns_of(int(name))
        if ns is None or ns in found:
            continue
        table = _mountinfo(name)
        if table is None:
            continue
        found[ns] = (int(name), [(mp, src, dev) for dev, mp, kind, src in table
                                 if kind == CAS_FSTYPE])
    return {ns: v for ns, v in found.items() if v[1]}


def mount_dev(mountpoint: Path, pid: int | str = "self") -> str | None:
    """``MAJOR:MINOR`` of the topmost mount at ``mountpoint`` in ``pid``'s namespace (for
    a FUSE mount the minor is the kernel's connection number), or None."""
    target, found = str(canon(mountpoint)), None
    for dev, where, _kind, _src in _mountinfo(pid) or []:
        if where == target:
            found = dev
    return found


def _mountinfo(pid: int | str) -> list[tuple[str, str, str, str]] | None:
    """(device, mount point, fstype, source) of every mount in ``pid``'s namespace, or
    None if the process is gone (or its table is not readable by us)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        head, _, tail = line.partition(" - ")
        parts, rest = head.split(), tail.split()
        if len(parts) >= 5 and len(rest) >= 2:
            out.append((parts[2], unescape(parts[4]), rest[0], unescape(rest[1])))
    return out


def fuse_daemon(dev: str) -> int | None:
    """The PID of the process serving the FUSE connection of device ``dev``: it holds
    ``/dev/fuse`` open, and that descriptor's fdinfo names the connection
    (``fuse_connection:``, the minor of the mount's device).  Needs to see the
    process's descriptors (its owner, or root)."""
    minor = dev.partition(":")[2]
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") != "/dev/fuse":
                    continue
                with open(f"/proc/{name}/fdinfo/{fd}") as f:
                    info = f.read()
            except OSError:
                continue
            for line in info.splitlines():
                key, _, value = line.partition(":")
                if key == "fuse_connection" and value.strip() == minor:
                    return int(name)
    return None


def namespaces_holding(dev: str, mountpoint: Path) -> dict[str, tuple[str, list[int]]]:
    """Every mount namespace whose table has the mount of device ``dev`` at
    ``mountpoint``: ``{ns: (mount point, [pids in that namespace])}``.  One table
    read per namespace.  The path must match too: once a FUSE connection is gone its
    number (the device's minor) is soon reused by another mount."""
    pids: dict[str, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ns = ns_of(int(name))
            if ns is not None:
                pids.setdefault(ns, []).append(int(name))
    out = {}
    for ns, members in pids.items():
        for pid in members:
            table = _mountinfo(pid)
            if table is None:
                continue
            where = [mp for d, mp, kind, _src in table
                     if d == dev and kind == CAS_FSTYPE and mp == str(mountpoint)]
            if where:
                out[ns] = (where[0], sorted(members))
            break
    return out


def open_on(dev: str) -> list[int]:
    """PIDs with a file, working directory or root on device ``dev``."""
    major, _, minor = dev.partition(":")
    want = os.makedev(int(major), int(minor))
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            links = [f"fd/{fd}" for fd in os.listdir(f"/proc/{name}/fd")] + ["cwd", "root"]
        except OSError:
            continue
        for link in links:
            try:
                if os.stat(f"/proc/{name}/{link}").st_dev == want:
                    out.append(int(name))
                    break
            except OSError:
                continue
    return out
