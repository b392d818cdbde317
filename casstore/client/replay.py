"""Replaying a release's prefetch list on mount: its objects fetched ahead, bounded and
in the background, while the first reads are served.

Replay is advisory: a missing, corrupt or malformed list or object is logged and
counted, never fatal (the list format is :mod:`casstore.releases.prefetch`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from casstore.errors import CasError
from casstore.format.objects import ObjectId
from casstore.releases.prefetch import PrefetchList
from casstore.sources.base import ObjectSource

log = logging.getLogger(__name__)

BATCH = 32  # objects per prefetch() call: one batch of parallel requests
WORKERS = 16  # fetch() threads when the source has no batch method
LEAD_BYTES = 1 << 20  # a file whose own objects store this much is copied first
Warm = Callable[[str, set[ObjectId]], set[ObjectId]]


@dataclass
class Progress:
    """What ``cas status`` shows while (and after) a list is replayed."""

    state: str = "pending"  # pending, loading, running, done, failed, none (no list)
    total: int = 0
    done: int = 0
    cached: int = 0
    errors: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    files_warmed: int = 0
    seconds: float = 0.0
    note: str = ""

    def summary(self) -> dict:
        return dict(self.__dict__)


class Replay:
    """Fetch a list's objects into the cache, in the background, bounded.

    ``source`` is the composed source under the client's known-bad wrapper: its
    ``prefetch(oids)`` batch method is used when it has one (an HTTP source behind
    an ObjectCache: ``BATCH`` requests in flight), else ``WORKERS`` threads call
    ``fetch`` (a local, NFS or CVMFS folder: this warms the OS and CVMFS caches).
    ``warm(path, oids)`` is called for each listed path: the FileCache starts its
    whole-file copy of a large file that was read and returns the ids that copy
    fetches, which the batches or fetches then skip, so each of those bytes is
    fetched, verified and decompressed once, by the copy.  The large files go
    first, largest first (:func:`split_files`).  Nothing raised here reaches a
    reader.
    """

    def __init__(self, load: Callable[[], PrefetchList | None], source: ObjectSource,
                 warm: Warm | None = None, batch: int = BATCH,
                 workers: int = WORKERS) -> None:
        self._load, self.source, self.warm = load, source, warm
        self.batch, self.workers = batch, workers
        self.progress = Progress()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True, name="prefetch-list")
        self.thread.start()

    def summary(self) -> dict:
        return self.progress.summary()

    def run(self) -> None:
        p, t0 = self.progress, time.monotonic()
        p.state = "loading"
        try:
            plist = self._load()
            if plist is None:
                p.state, p.note = "none", "release has no prefetch list for this level"
                return
            p.total, p.bytes_total, p.state = len(plist.objects), plist.total_bytes(), "running"
            batch_fn = getattr(self.source, "prefetch", None)
            if batch_fn is not None:
                self._replay_batched(batch_fn, plist)
            else:  # whole-file copies fetch their own chunks: fetch only the rest
                lead, others = split_files(plist)
                self._fetch_all(plist, self._warm(lead + others))
            p.state = "done"
            log.info("prefetch: %d of %d objects (%d bytes) in %.2fs, %d errors",
                     p.done, p.total, p.bytes_done, time.monotonic() - t0, p.errors)
        except CasError as exc:
            p.state, p.note = "failed", str(exc)
            log.warning("prefetch list not used: %s", exc)
        except Exception as exc:  # noqa: BLE001 - advisory: never take the mount down
            p.state, p.note = "failed", f"internal error: {exc}"
            log.exception("prefetch failed")
        finally:
            p.seconds = round(time.monotonic() - t0, 3)

    def _replay_batched(self, fn: Callable, plist: PrefetchList) -> None:
        """Large files first, each byte fetched, verified and decompressed once.

        The trees on the large files' paths that other listed paths share go
        first (one batch round), then their copies start, largest (the sysimage)
        first; a copy fetches its manifest and chunks straight into the copy, and
        the batches skip them.  Then the rest of the list in batches, and last the copies of any
        other large file (those read the batched objects from the cache)."""
        sizes = dict(plist.objects)
        lead, others = split_files(plist) if self.warm is not None else ([], [])
        first = path_objects(plist, lead)
        self._batches(fn, first, sizes)
        covered = self._warm(lead) - set(first)
        for oid in covered & sizes.keys():  # fetched by a whole-file copy
            self._count(oid, True, sizes)
        skip = covered | set(first)
        self._batches(fn, [o for o in plist.oids() if o not in skip], sizes)
        self._warm(others)

    def _batches(self, fn: Callable, oids: list[ObjectId], sizes: dict) -> None:
        for i in range(0, len(oids), self.batch):
            if self.stop.is_set():
                return
            self._batch(fn, oids[i:i + self.batch], sizes)

    def _fetch_all(self, plist: PrefetchList, skip: set[ObjectId]) -> None:
        sizes = dict(plist.objects)
        for oid in skip & sizes.keys():  # fetched by a whole-file copy
            self._count(oid, True, sizes)
        oids = [o for o in plist.oids() if o not in skip]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for oid, ok in zip(oids, pool.map(self._fetch_one, oids), strict=True):
                self._count(oid, ok, sizes)

    def _batch(self, fn: Callable, part: list[ObjectId], sizes: dict) -> None:
        try:
            res = fn(part)
        except Exception as exc:  # noqa: BLE001 - advisory: count the batch, go on
            log.warning("prefetch batch of %d failed: %s", len(part), exc)
            self.progress.errors += len(part)
            self.progress.done += len(part)
            return
        failed = getattr(res, "failed", None) or {}
        self.progress.cached += int(getattr(res, "cached", 0) or 0)
        for oid in part:
            self._count(oid, oid not in failed, sizes)
        for oid, exc in list(failed.items())[:3]:
            log.warning("prefetch of %s failed: %s", oid, exc)

    def _fetch_one(self, oid: ObjectId) -> bool:
        if self.stop.is_set():
            return False
        try:
            self.source.fetch(oid)
            return True
        except CasError as exc:
            log.warning("prefetch of %s failed: %s", oid, exc)
            return False

    def _count(self, oid: ObjectId, ok: bool, sizes: dict) -> None:
        p = self.progress
        p.done += 1
        if ok:
            p.bytes_done += sizes.get(oid, 0)
        else:
            p.errors += 1

    def _warm(self, files: list[tuple[str, set[ObjectId]]]) -> set[ObjectId]:
        """Start whole-file copies, in the order given; the ids those copies fetch
        themselves."""
        covered: set[ObjectId] = set()
        if self.warm is None:
            return covered
        for path, oids in files:
            if self.stop.is_set():
                break
            try:
                got = self.warm(path, oids)
            except CasError as exc:
                log.debug("prefetch warm-up of %s: %s", path, exc)
                continue
            if got:
                self.progress.files_warmed += 1
                covered.update(got)
        return covered


def split_files(plist: PrefetchList) -> tuple[list[tuple[str, set[ObjectId]]],
                                              list[tuple[str, set[ObjectId]]]]:
    """The listed files whose own objects (listed for no other path) store at least
    ``LEAD_BYTES``, largest first (the sysimage first); and the other files, in
    first-access order."""
    refs = Counter(i for _p, idx in plist.files for i in set(idx))
    own = [sum(plist.objects[i][1] for i in set(idx) if refs[i] == 1)
           for _p, idx in plist.files]
    files = plist.file_objects()
    big = sorted((k for k, n in enumerate(own) if n >= LEAD_BYTES), key=lambda k: -own[k])
    rest = sorted(set(range(len(files))) - set(big))
    return [files[k] for k in big], [files[k] for k in rest]


def path_objects(plist: PrefetchList, lead: list[tuple[str, set[ObjectId]]]) -> list[ObjectId]:
    """The objects of ``lead`` that other listed paths need too, in list order: the
    trees their lookups walk, never a chunk only a whole-file copy reads."""
    paths = {p for p, _o in lead}
    refs = Counter(i for _p, idx in plist.files for i in set(idx))
    want = {i for p, idx in plist.files if p in paths for i in idx if refs[i] > 1}
    return [plist.objects[i][0] for i in sorted(want)]
