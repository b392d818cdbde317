"""The access recorder: a :class:`ReleaseFS` that notes every path it serves.

``cas depot build`` mounts a just-published release with it (``cas exec
--record-access FILE``, hidden) and runs the workload, so that the release's
prefetch list (:mod:`casstore.releases.prefetch`) holds what a real start reads: FUSE
``read`` (including the sysimage's mmap page-ins) and ``readlink`` as data
accesses, lookups and ``readdir`` as metadata accesses, in first-access order.
The daemon writes the record when it unmounts.
"""

from __future__ import annotations

from collections.abc import Iterator

from casstore.client.fuse.fs import ReleaseFS
from casstore.releases.prefetch import DATA, META, AccessRecorder


class RecordingFS(ReleaseFS):
    """ReleaseFS plus an :class:`AccessRecorder`; the path is noted before it is
    resolved, so failed lookups (which need their parent trees) count too."""

    def __init__(self, base: ReleaseFS, recorder: AccessRecorder) -> None:
        super().__init__(base.vfs, base.uid, base.gid)
        self.recorder = recorder

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        self.recorder.note(path, META)
        return super().getattr(path, fh)

    def stat_bytes(self, path: str, fh: int | None = None) -> bytes:
        self.recorder.note(path, META)
        return super().stat_bytes(path, fh)

    def readdir_raw(self, path: str, start: int = 0) -> Iterator[bytes]:
        self.recorder.note(path, META)
        return super().readdir_raw(path, start)

    def readlink(self, path: str) -> str:
        self.recorder.note(path, DATA)
        return super().readlink(path)

    def read(self, path: str, size: int, offset: int, fh: int | None = None) -> bytes:
        self.recorder.note(path, DATA)
        return super().read(path, size, offset, fh)
