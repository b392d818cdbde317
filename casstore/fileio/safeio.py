"""Reading one untrusted local file: never follow a symlink, never block, never
read more than a limit, and sort every failure into missing / corrupt / temporary.

Object files, release documents, index files, refs and cached objects all come
through here: a FIFO planted in place of an object used to
hang a mount, and a 1 GB release file was read whole before its 1 MiB check.  The
file is opened with ``O_NONBLOCK | O_NOFOLLOW``, then ``fstat``-ed: it must be a
regular file (optionally owned by a given user) no bigger than the limit, all
checked before any byte is read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from casstore.errors import CasError, RemoteError, StoreError

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC

# Errors that say "not now" rather than "not there" or "broken": NFS timeouts and
# stale handles, a dead FUSE or network filesystem, running out of fds or memory.
TRANSIENT = frozenset({
    errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN, errno.EINTR, errno.ENOTCONN,
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTDOWN,
    errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET,
    errno.EREMOTEIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOLINK,
})
MISSING = frozenset({errno.ENOENT, errno.ENOTDIR})
NOT_A_FILE = frozenset({errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP})


def os_error(exc: OSError, what: str, corrupt: type[CasError]) -> CasError:
    """The CasError for an OSError met while reading ``what`` (never missing)."""
    reason = exc.strerror or str(exc)
    if exc.errno in TRANSIENT:
        return RemoteError(f"cannot read {what} right now: {reason} (temporary; retry)")
    if exc.errno in NOT_A_FILE:
        return corrupt(f"{what} is not a regular file ({reason})")
    return StoreError(f"cannot read {what}: {reason}")


def check_stat(st: os.stat_result, limit: int, what: str, corrupt: type[CasError],
               owner: int | None = None) -> None:
    """Refuse anything but a regular file of at most ``limit`` bytes (and ``owner``'s)."""
    if not stat.S_ISREG(st.st_mode):
        raise corrupt(f"{what} is not a regular file")
    if owner is not None and st.st_uid != owner:
        raise corrupt(f"{what} is owned by uid {st.st_uid}, not {owner}")
    if st.st_size > limit:
        raise corrupt(f"{what} is too large ({st.st_size} bytes, limit {limit})")


def read_regular(path: Path | str, limit: int, what: str, *, corrupt: type[CasError],
                 owner: int | None = None, dir_fd: int | None = None,
                 max_bytes: int | None = None) -> bytes | None:
    """The bytes of a regular file (at most ``max_bytes`` of them if given), or None
    if it does not exist.  Raises ``corrupt`` for anything that is not a plausible
    file, RemoteError for a temporary failure, StoreError otherwise."""
    got = read_regular_stat(path, limit, what, corrupt=corrupt, owner=owner, dir_fd=dir_fd,
                            max_bytes=max_bytes)
    return None if got is None else got[0]


def read_regular_stat(path: Path | str, limit: int, what: str, *, corrupt: type[CasError],
                      owner: int | None = None, dir_fd: int | None = None,
                      max_bytes: int | None = None) -> tuple[bytes, os.stat_result] | None:
    """:func:`read_regular` plus the ``fstat`` of the file that was read (writers
    compare its ctime and size with what they recorded when they last checked it)."""
    opened = open_regular(path, limit, what, corrupt=corrupt, owner=owner, dir_fd=dir_fd)
    if opened is None:
        return None
    fd, st = opened
    try:
        want = st.st_size if max_bytes is None else min(st.st_size, max_bytes)
        return read_fd(fd, want), st
    except OSError as exc:
        raise os_error(exc, what, corrupt) from None
    finally:
        os.close(fd)


def open_regular(path: Path | str, limit: int, what: str, *, corrupt: type[CasError],
                 owner: int | None = None,
                 dir_fd: int | None = None) -> tuple[int, os.stat_result] | None:
    """(fd, fstat) of a regular file within ``limit`` (and ``owner``'s), None if absent.

    Raises ``corrupt`` for a symlink, FIFO, folder, oversized or foreign file; the
    open never blocks (a FIFO opens at once with ``O_NONBLOCK`` and is then refused).
    The caller closes the descriptor.
    """
    try:
        fd = os.open(path, OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in MISSING:
            return None
        raise os_error(exc, what, corrupt) from None
    try:
        check_stat(st := os.fstat(fd), limit, what, corrupt, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_fd(fd: int, size: int) -> bytes:
    """Read up to ``size`` bytes (fewer only at end of file: decoding catches that)."""
    parts = []
    left = size
    while left > 0:
        b = os.read(fd, min(left, 8 << 20))
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def stat_regular(path: Path | str, limit: int, what: str, *, corrupt: type[CasError],
                 dir_fd: int | None = None) -> int | None:
    """The size of a regular file without opening it, or None if it does not exist."""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in MISSING:
            return None
        raise os_error(exc, what, corrupt) from None
    check_stat(st, limit, what, corrupt)
    return st.st_size
