"""Counters that sources bump on their hot path (client metrics, casstore.client.metrics).

Kept apart from the rendering and exporters so that a source costs no import of
``prometheus_client`` or an HTTP server: every ``cas put``/``cas get`` opens a
source, and start-up is part of every short command's time.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

from casstore.errors import ObjectCorrupt, ObjectMissing, RemoteError


class _Row:
    """One thread's cells; when the thread ends its values fold into the total."""

    __slots__ = ("cells", "__weakref__")

    def __init__(self, n: int) -> None:
        self.cells = [0] * n


class ShardedCounters:
    """``n`` monotonic counters with one row of cells per thread.

    ``add`` touches only the calling thread's row, so increments from several
    threads never contend and never lose an update (each cell has one writer).
    ``values`` sums the rows under a lock that only readers and new threads take.
    Rows of finished threads are folded into a total, so months of short-lived
    prefetch threads do not accumulate rows.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._local = threading.local()
        self._rows: list[list[int]] = []
        self._dead = [0] * n
        self._lock = threading.Lock()

    def add(self, i: int, value: int = 1) -> None:
        try:
            cells = self._local.row.cells
        except AttributeError:
            cells = self._new_row()
        cells[i] += value

    def _new_row(self) -> list[int]:
        row = _Row(self.n)
        with self._lock:
            self._rows.append(row.cells)
        self._local.row = row
        weakref.finalize(row, self._fold, row.cells)
        return row.cells

    def _fold(self, cells: list[int]) -> None:
        with self._lock:
            for i, v in enumerate(cells):
                self._dead[i] += v
            with contextlib.suppress(ValueError):
                self._rows.remove(cells)

    def values(self) -> list[int]:
        with self._lock:
            out = list(self._dead)
            for cells in self._rows:
                for i, v in enumerate(cells):
                    out[i] += v
        return out


MISSING, CORRUPT, TEMPORARY, OTHER = "missing", "corrupt", "temporary", "other"
ERROR_KINDS = (MISSING, CORRUPT, TEMPORARY, OTHER)
_OBJECTS, _BYTES, _FAILOVERS = 0, 1, 2
_KIND_INDEX = {k: 3 + i for i, k in enumerate(ERROR_KINDS)}


def error_kind(exc: BaseException) -> str:
    """missing, corrupt (incl. a damaged document), temporary or other."""
    if isinstance(exc, ObjectMissing):
        return MISSING
    if isinstance(exc, ObjectCorrupt):
        return CORRUPT
    if isinstance(exc, RemoteError):
        return TEMPORARY
    return OTHER


class SourceCounters:
    """What one source did: a store folder, or one server URL of an HTTP source.

    Sources keep a list of these as ``source_counters`` (one per folder or URL);
    :class:`ClientMetrics` finds them by walking the composed source.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._c = ShardedCounters(3 + len(ERROR_KINDS))

    def fetched(self, nbytes: int) -> None:
        """One object read from this source: ``nbytes`` stored bytes."""
        c = self._c
        c.add(_OBJECTS)
        c.add(_BYTES, nbytes)

    def error(self, kind: str) -> None:
        self._c.add(_KIND_INDEX.get(kind, _KIND_INDEX[OTHER]))

    def failed(self, exc: BaseException) -> None:
        self.error(error_kind(exc))

    def failover(self) -> None:
        """A request this source failed went on to the next server or proxy."""
        self._c.add(_FAILOVERS)

    def snapshot(self) -> dict[str, Any]:
        v = self._c.values()
        return {"objects": v[_OBJECTS], "bytes": v[_BYTES], "failovers": v[_FAILOVERS],
                "errors": {k: v[i] for k, i in _KIND_INDEX.items()}}


class Gauge:
    """A value that is set (a float assignment is atomic: no lock)."""

    __slots__ = ("value",)

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def set(self, value: float) -> None:
        self.value = float(value)
