"""Durable file writes in one place: temp file, fsync, rename, fsync the directory.

A partial file must never appear under a content address (restic's local backend
rule).  Disk-full is turned into :class:`NoSpace` here so every caller gets the same
clear message and the temporary file is always removed.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from casstore.errors import NoSpace, StoreError, UnsafeFolder

TMP_PREFIX = "tmp-"


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (also when it is not ours to signal): stale
    status and metrics files of dead daemons are recognised by this."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_dir_problem(info: os.stat_result, uid: int) -> str | None:
    """Why a folder with this ``lstat``/``fstat`` may not hold data that a process of
    ``uid`` later trusts (caches, a scratch depot), or None.  Another user who owns it,
    or may write in it, could plant files or symlinks there before we use it.  The
    one rule for every such folder (cas mount, cas doctor, cas env, object cache)."""
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (a symlink or a file?)"
    if info.st_uid != uid:
        return f"is owned by uid {info.st_uid}, not by uid {uid} that uses it"
    if info.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def require_private_dir(path: Path, what: str, hint: str, uid: int | None = None) -> None:
    """Raise :class:`UnsafeFolder` ("<what> <path> <problem>; <hint>") unless ``path``
    passes :func:`private_dir_problem` for ``uid`` (default: this process's euid).
    ``lstat``, so a symlink planted in place of the folder is refused, not followed."""
    uid = os.geteuid() if uid is None else uid
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeFolder(f"cannot use {what} {path}: {exc.strerror or exc}") from None
    problem = private_dir_problem(info, uid)
    if problem:
        raise UnsafeFolder(f"{what} {path} {problem}; {hint}")


def make_private_dir(path: Path, what: str, hint: str) -> Path:
    """Create ``path`` 0700 (parents as needed) unless it exists, then
    :func:`require_private_dir`: the one way the client makes a folder it trusts."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeFolder(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    require_private_dir(path, what, hint)
    return path


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
        return _no_space(dest)
    return StoreError(f"cannot write {dest}: {exc.strerror or exc}")


def _no_space(label: Path | str) -> NoSpace:
    return NoSpace(f"no space left on device (or no free inodes) while writing {label}")


@contextmanager
def os_errors(label: Path | str) -> Iterator[None]:
    """Turn an OSError in the block into one line naming the file (or ``label``).

    ENOSPC also means "no free inodes" (mkdir, creat), and EDQUOT a quota: both are
    :class:`NoSpace` (its own exit code) wherever a command writes.  EMFILE says which
    limit to raise.  Everything else is a StoreError.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(label) from None
        if exc.errno == errno.EMFILE:
            raise StoreError(f"{label}: too many open files (directory nesting deeper "
                             "than the open-file limit, see ulimit -n)") from None
        where = exc.filename if isinstance(exc.filename, str) else label
        raise StoreError(f"{where}: {exc.strerror or exc}") from None


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
