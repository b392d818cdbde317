"""The kernel's mount table, as this process sees it (``/proc/self/mounts``).

Used to tell whether a path is mounted, and whether it is a casstore FUSE mount
(fstype ``fuse.cas``) before ``cas umount`` touches it (issue 8, item 13).
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
