"""Can a casstore mount use kernel FUSE passthrough on this machine?  A probe.

Passthrough (Linux >= 6.9) needs two things from the FUSE daemon:
1. at INIT, the ``FUSE_PASSTHROUGH`` flag (bit 37 of the init flags, in ``flags2``)
   and a ``max_stack_depth`` in the INIT reply;
2. per open, a backing id from the ``FUSE_DEV_IOC_BACKING_OPEN`` ioctl on the
   ``/dev/fuse`` fd (root only), returned in the open reply with ``FOPEN_PASSTHROUGH``.

This probe mounts a one-file mfusepy filesystem on the installed libfuse, and in its
``init`` callback tries step 2 directly with ``ioctl`` on the session's fd, backing
the file with a real file.  It prints the kernel's passthrough config, the libfuse
version and the ioctl's outcome.  Run as root:  python bench/passthrough_probe.py
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gzip
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501  # _IOW(229, 1, struct fuse_backing_map), 16 bytes
RESULT: dict[str, str] = {}


def kernel_config() -> str:
    try:
        text = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        return "unknown (/proc/config.gz unreadable)"
    lines = [ln for ln in text.splitlines() if "FUSE_PASSTHROUGH" in ln]
    return ", ".join(lines) or "CONFIG_FUSE_PASSTHROUGH not set"


class Probe(mfusepy.Operations):
    """One file, ``/f``; ``init`` asks the kernel for a backing id."""

    def __init__(self, backing: str) -> None:
        self.backing = backing

    def init(self, path: str) -> None:
        lib = mfusepy._libfuse
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_get_session.argtypes = [ctypes.c_void_p]
        lib.fuse_session_fd.argtypes = [ctypes.c_void_p]
        fuse = lib.fuse_get_context().contents.fuse
        dev_fd = lib.fuse_session_fd(lib.fuse_get_session(fuse))
        RESULT["has fuse_passthrough_open"] = str(hasattr(lib, "fuse_passthrough_open"))
        fd = os.open(self.backing, os.O_RDONLY)
        try:
            out = fcntl.ioctl(dev_fd, FUSE_DEV_IOC_BACKING_OPEN,
                              struct.pack("<iIQ", fd, 0, 0))
            RESULT["backing open"] = f"ok, backing id {struct.unpack('<i', out[:4])[0]}"
        except OSError as exc:
            RESULT["backing open"] = (f"refused: {errno.errorcode.get(exc.errno, exc.errno)} "
                                      f"({exc.strerror})")
        finally:
            os.close(fd)

    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == "/":
            return {"st_mode": 0o40755, "st_nlink": 2}
        if path == "/f":
            return {"st_mode": 0o100644, "st_nlink": 1, "st_size": 4}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", "f"]


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root (the backing ioctl needs CAP_SYS_ADMIN)")
    with tempfile.TemporaryDirectory(prefix="cas-passthrough-") as tmp:
        mp, backing = Path(tmp) / "mnt", Path(tmp) / "backing"
        mp.mkdir()
        backing.write_bytes(b"abc\n")
        t = threading.Thread(target=mfusepy.FUSE, args=(Probe(str(backing)), str(mp)),
                             kwargs={"foreground": True, "nothreads": True}, daemon=True)
        t.start()
        deadline = time.monotonic() + 20
        while "backing open" not in RESULT and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        t.join(10)
    print(f"kernel {os.uname().release}: {kernel_config()}")
    print(f"libfuse {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor} "
          f"(mfusepy {mfusepy.__version__ if hasattr(mfusepy, '__version__') else '?'})")
    for k, v in RESULT.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
