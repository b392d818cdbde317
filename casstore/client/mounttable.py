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


def cas_mounts_everywhere() -> dict[str, tuple[int, list[tuple[str, str]]]]:
    """Every casstore mount on the host, per mount namespace: ``{ns: (a pid in it,
    [(mount point, source), ...])}``.

    Private namespaces (``cas exec``) have no path of their own, so one process
    per namespace is found by scanning ``/proc``; its mount table is read once.
    Needs root to see the namespaces of other users' processes."""
    found: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        ns = ns_of(int(name))
        if ns is None or ns in found:
            continue
        table = mounts_of(name)
        if table is None:
            continue
        found[ns] = (int(name), [(mp, src) for src, mp, kind in table if kind == CAS_FSTYPE])
    return {ns: v for ns, v in found.items() if v[1]}
