"""Durable file writes in one place: temp file, fsync, rename, fsync the directory.

A partial file must never appear under a content address (restic's local backend
rule).  Disk-full is turned into :class:`NoSpace` here so every caller gets the same
clear message and the temporary file is always removed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from casstore.errors import NoSpace, StoreError

TMP_PREFIX = "tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dest: Path, data: bytes | memoryview, tmpdir: Path, *, durable: bool = True,
                 replace: bool = True, mode: int = 0o644) -> bool:
    """Write ``data`` to ``dest`` atomically; return False if ``replace`` is off and it exists.

    The temporary file lives in ``tmpdir`` (same filesystem) so that an interrupted
    write leaves only a ``tmp-*`` file there, which ``cas gc`` removes.
    """
    try:
        fd, tmpname = tempfile.mkstemp(prefix=TMP_PREFIX, dir=tmpdir)
    except OSError as exc:  # ENOSPC here means no free inodes
        raise os_error(exc, dest) from None
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp makes 0600; mirrors serve stores to everyone
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmpname, dest)
        else:
            try:
                os.link(tmpname, dest)
            except FileExistsError:
                os.unlink(tmpname)
                return False
            os.unlink(tmpname)
        if durable:
            fsync_dir(dest.parent)
        return True
    except OSError as exc:
        _discard(tmpname)
        raise os_error(exc, dest) from None
    except BaseException:
        _discard(tmpname)
        raise


def os_error(exc: OSError, dest: Path | str) -> StoreError | NoSpace:
    """The CasError for a failed write: disk full, no free inodes or over quota is NoSpace."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on device (or no free inodes) while writing {dest}")
    return StoreError(f"cannot write {dest}: {exc.strerror or exc}")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _discard(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
