"""``cas gc``: mark from the roots, sweep what is unreachable and old enough.

gc keeps unreferenced objects younger than a grace period, so a ``put`` whose tree
is not referenced yet loses nothing, and it sweeps under the store's exclusive lock
while puts hold it shared.  If marking met any problem it refuses to sweep
(:mod:`casstore.store.mark`).
"""

from __future__ import annotations

import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import GcRefused, IndexDamaged, UsageError
from casstore.fileio.fsutil import TMP_PREFIX
from casstore.format.layout import object_path
from casstore.format.objects import ObjectId
from casstore.store.mark import mark
from casstore.store.writable import Store


@dataclass
class GcReport:
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0
    live: int = 0
    tmp_removed: int = 0
    problems: list[str] = field(default_factory=list)


def check_grace(grace_seconds: float) -> float:
    """A grace period must be a finite, non-negative number of seconds."""
    if not math.isfinite(grace_seconds) or grace_seconds < 0:
        raise UsageError(f"grace period must be finite and >= 0, not {grace_seconds}")
    return grace_seconds


def gc(store: Store, grace_seconds: float, dry_run: bool = False,
       force: bool = False) -> GcReport:
    """Mark from roots and sweep what is unreachable and older than the grace period.

    If marking met a missing, corrupt or unreadable object or root, whatever hangs
    below it was not marked, so sweeping would delete live data: refuse unless forced.
    """
    rep = GcReport()
    cutoff = time.time() - check_grace(grace_seconds)
    with store.lock(exclusive=True):
        m = mark(store)
        rep.problems = m.problems
        rep.live = len(m.live)
        if m.problems and not force:
            raise GcRefused(f"gc found {len(m.problems)} problem(s) while marking, first: "
                            f"{m.problems[0]}; nothing deleted (run 'cas fsck' for the "
                            "full list, or 'cas gc --force' to sweep anyway)")
        doomed = _unreachable(store, m.live, cutoff, rep)
        rep.tmp_removed = _sweep_tmp(store.tmp, cutoff, dry_run)
        if not dry_run:
            for oid in doomed:
                store.delete_object(oid)
            try:
                store.index.remove(doomed)
            except IndexDamaged as exc:
                rep.problems.append(f"index: {exc}")
    return rep


def _unreachable(store: Store, live: set[bytes], cutoff: float, rep: GcReport) -> list[ObjectId]:
    doomed = []
    for oid in store.iter_object_ids():
        if oid.digest in live:
            continue
        try:
            st = os.lstat(object_path(store.root, oid))
        except FileNotFoundError:
            continue
        if st.st_mtime > cutoff:
            rep.kept_young += 1
            continue
        doomed.append(oid)
        rep.deleted += 1
        rep.deleted_bytes += st.st_size
    return doomed


def _sweep_tmp(tmpdir: Path, cutoff: float, dry_run: bool) -> int:
    """Remove temporary files left by interrupted writes."""
    n = 0
    for name in os.listdir(tmpdir):
        p = tmpdir / name
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if name.startswith(TMP_PREFIX) and stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
            n += 1
            if not dry_run:
                p.unlink(missing_ok=True)
    return n
