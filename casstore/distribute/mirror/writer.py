"""The destination folder of ``cas mirror``: presence checks and atomic writes.

Every file is written atomically (a temporary file in ``.casmirror-tmp/`` inside the
destination, fsync, rename, fsync of the folder).  The destination is treated like
the client caches: a symlink planted anywhere below it (``objects/``, an
``objects/xx/`` folder, ``releases/NAME/``, the temporary folder) is never followed.
A planted folder link is refused with a one-line error; a link at a file's final
name is replaced by the rename, never written through.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from casstore.distribute.mirror.folder import CATALOG_MARKER, TMP_DIR
from casstore.errors import CasError, MirrorError
from casstore.fileio.fsutil import atomic_write, fsync_dir, os_error
from casstore.fileio.safeio import read_regular
from casstore.format.layout import MAX_STORED_SIZE, object_relpath
from casstore.format.objects import HEADER_SIZE, ObjectId, ObjType, decode, peek_type

# Test-only: seconds to sleep after each object copy (capped at 1 s), so a test can
# SIGKILL a real ``cas mirror`` mid-copy with a small store.  Never set it otherwise.
DELAY_ENV = "CAS_MIRROR_TEST_DELAY"

OnWrite = Callable[[str], None]


class MirrorWriter:
    """The destination folder: presence checks and atomic writes, nothing else."""

    def __init__(self, root: Path, markers: bool, on_write: OnWrite | None) -> None:
        self.root = root
        self.tmp = root / TMP_DIR
        self.markers = markers
        self.on_write = on_write
        self._real: set[str] = set()  # folders below root known to be real folders
        try:
            self.delay = min(max(float(os.environ.get(DELAY_ENV) or 0), 0.0), 1.0)
        except ValueError:
            self.delay = 0.0

    def path(self, rel: str) -> Path:
        return self.root / rel

    def reset_tmp(self) -> None:
        """Start with an empty temporary folder (a killed run's leftovers go; a link
        or file planted at its name is removed, never followed)."""
        try:
            st = os.lstat(self.tmp)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(self.tmp)
            else:
                os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(exc, self.tmp) from None
        self.folder(TMP_DIR)

    def remove_tmp(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def folder(self, rel_dir: str, create: bool = True) -> Path:
        """``root/rel_dir`` after checking that every folder below root is a real folder
        (made if missing and ``create``); a symlink or file planted there is refused
        with a one-line error, never followed."""
        here = self.root
        done = ""
        for part in Path(rel_dir).parts:
            here, done = here / part, f"{done}/{part}" if done else part
            if done in self._real:
                continue
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if not create:
                    return self.root / rel_dir
                try:
                    os.mkdir(here, 0o755)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise os_error(exc, here) from None
                st = os.lstat(here)
            if not stat.S_ISDIR(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
                raise MirrorError(f"{here} is {what}: cas mirror never follows links "
                                  "planted in its destination; remove it and run again")
            self._real.add(done)
        return here

    def has_object(self, oid: ObjectId, expect: ObjType | None = None) -> bool:
        """The object file is there (a regular file, and of the type a tree or blob
        reference needs: a chunk with a tree's bytes does not stand for a tree)."""
        rel = object_relpath(oid)
        p = self.folder(os.path.dirname(rel), create=False) / os.path.basename(rel)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size < HEADER_SIZE:
            return False
        if expect is None or expect == ObjType.CHUNK:
            return True
        try:
            head = read_regular(p, MAX_STORED_SIZE, f"object {oid}", corrupt=CasError,
                                max_bytes=HEADER_SIZE)
            return head is not None and peek_type(oid, head) == expect
        except CasError:
            return False

    def verified_copy(self, oid: ObjectId, expect: ObjType | None) -> bytes | None:
        """The destination's copy decoded and checked against its id (for --repair),
        or None if it is missing or damaged (and must be copied again)."""
        rel = object_relpath(oid)
        self.folder(os.path.dirname(rel), create=False)
        try:
            data = read_regular(self.path(rel), MAX_STORED_SIZE,
                                f"object {oid}", corrupt=CasError)
            return None if data is None else decode(oid, data, expect)[1]
        except CasError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        p = self.folder(os.path.dirname(rel)) / os.path.basename(rel)
        atomic_write(p, data, self.tmp)
        if self.on_write is not None:
            self.on_write(rel)

    def write_object(self, oid: ObjectId, stored: bytes) -> None:
        self._marker(oid)
        self.write(object_relpath(oid), stored)
        self._slow_down()

    def stage(self, oid: ObjectId, stored: bytes) -> int:
        """Keep a verified tree or blob in the temporary folder until its children are
        in place (memory stays flat however many new trees a release has)."""
        fd = os.open(self.tmp / oid.hex, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o644)
        try:
            os.fchmod(fd, 0o644)  # mirrors serve everyone, whatever the umask
            view = memoryview(stored)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise os_error(exc, self.tmp / oid.hex) from None
        finally:
            os.close(fd)
        return len(stored)

    def commit(self, oid: ObjectId) -> None:
        """Move a staged object to its final name: fsync, rename, fsync the folder."""
        rel = object_relpath(oid)
        final, staged = self.path(rel), self.tmp / oid.hex
        self._marker(oid)
        try:
            fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.folder(os.path.dirname(rel))
            os.rename(staged, final)
            fsync_dir(final.parent)
        except OSError as exc:
            raise os_error(exc, final) from None
        if self.on_write is not None:
            self.on_write(rel)
        self._slow_down()

    def _marker(self, oid: ObjectId) -> None:
        if not self.markers:
            return
        folder = self.folder(os.path.dirname(object_relpath(oid)))
        if not os.path.lexists(folder / CATALOG_MARKER):
            atomic_write(folder / CATALOG_MARKER, b"", self.tmp)

    def _slow_down(self) -> None:
        if self.delay:
            time.sleep(self.delay)

    def read_small(self, rel: str, limit: int) -> bytes | None:
        self.folder(os.path.dirname(rel), create=False)
        try:
            return read_regular(self.path(rel), limit, rel, corrupt=CasError)
        except CasError:
            return None  # damaged or odd: rewrite it

    def write_if_changed(self, rel: str, data: bytes, limit: int) -> bool:
        if self.read_small(rel, limit) == data:
            return False
        self.write(rel, data)
        return True


