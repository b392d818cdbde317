"""Known-bad objects (as S3QL does): a source wrapper that remembers what failed.

A corrupt object (fails its hash, does not decode) is remembered for the life of
the wrapper: later requests fail at once, with no new fetch and no re-hash.  A
missing object is remembered for ``missing_retry_s`` only, because it may still
appear (a mirror catching up); the first request after that fetches it again.
Temporary errors (RemoteError) are not remembered: the next request retries.

Thread-safe: the FUSE thread, prefetch threads and server handlers share one.
"""

from __future__ import annotations

import threading
import time

from casstore.errors import ObjectCorrupt, ObjectMissing
from casstore.format.objects import ObjectId, ObjType
from casstore.sources.base import ObjectSource, SourceWrapper

MISSING_RETRY_S = 10.0


class KnownBadCorrupt(ObjectCorrupt):
    """A read touched an object already known to be corrupt (not fetched again)."""


class KnownBadMissing(ObjectMissing):
    """A read touched an object found missing less than the back-off ago."""


class KnownBad(SourceWrapper):
    """An :class:`ObjectSource` around ``inner`` that remembers failed objects."""

    def __init__(self, inner: ObjectSource, missing_retry_s: float = MISSING_RETRY_S,
                 clock=time.monotonic) -> None:
        self.inner = inner
        self.missing_retry_s = missing_retry_s
        self.clock = clock
        self.corrupt: dict[ObjectId, str] = {}
        self.missing: dict[ObjectId, tuple[float, str]] = {}  # retry-after time, message
        self.fast_failures = 0
        self._lock = threading.Lock()

    def check(self, oid: ObjectId) -> None:
        """Raise at once if ``oid`` is known bad (cheap when nothing has failed)."""
        if not (self.corrupt or self.missing):
            return
        with self._lock:
            msg = self.corrupt.get(oid)
            if msg is not None:
                self.fast_failures += 1
                raise KnownBadCorrupt(f"{msg} (known bad since an earlier read; not re-fetched)")
            until = self.missing.get(oid)
            if until is not None:
                if self.clock() < until[0]:
                    self.fast_failures += 1
                    raise KnownBadMissing(f"{until[1]} (known missing; retried after "
                                          f"{self.missing_retry_s:g} s)")
                del self.missing[oid]  # back-off over: the caller fetches again

    def fetch(self, oid: ObjectId, expect: ObjType | None = None) -> bytes:
        self.check(oid)
        try:
            return self.inner.fetch(oid, expect)
        except (KnownBadCorrupt, KnownBadMissing):
            raise
        except ObjectCorrupt as exc:  # incl. FormatError: the bytes will not change
            with self._lock:
                self.corrupt[oid] = str(exc)
            raise
        except ObjectMissing as exc:
            with self._lock:
                self.missing[oid] = (self.clock() + self.missing_retry_s, str(exc))
            raise

    def read_stored(self, oid: ObjectId) -> bytes:
        self.check(oid)
        return self.inner.read_stored(oid)

    def read_head(self, oid: ObjectId) -> bytes:
        self.check(oid)
        return self.inner.read_head(oid)

    def stored_size(self, oid: ObjectId) -> int | None:
        return self.inner.stored_size(oid)  # presence only: a corrupt object is present

    def forget(self, oids: list[ObjectId]) -> None:
        """Fetch these again next time: a revision switch that failed on them is retried
        at the next check, which a repaired source must be able to pass."""
        with self._lock:
            for oid in oids:
                self.corrupt.pop(oid, None)
                self.missing.pop(oid, None)

    def summary(self, limit: int = 20) -> dict:
        with self._lock:
            return {"corrupt": [str(o) for o in list(self.corrupt)[:limit]],
                    "missing": [str(o) for o in list(self.missing)[:limit]],
                    "n_corrupt": len(self.corrupt), "n_missing": len(self.missing),
                    "fast_failures": self.fast_failures}
