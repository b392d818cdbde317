"""Content-defined chunking (FastCDC) of file data.

We use the ``fastcdc`` package's Cython implementation (about 2 GB/s here) rather
than a hand-written roller; only its cut points are used, so swapping the
implementation changes dedup, never readability.  Chunk sizes were chosen by
measurement: see docs/FORMAT.md, "Chunking".
"""

from __future__ import annotations

from collections.abc import Iterator

from casstore.errors import StoreError

try:
    from fastcdc.fastcdc_cy import fastcdc_cy as _fastcdc
except ImportError:  # pragma: no cover - only on a broken install
    _fastcdc = None


def chunk_spans(data: memoryview | bytes, min_size: int, avg_size: int,
                max_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of each chunk, covering ``data`` exactly."""
    if _fastcdc is None:
        raise StoreError("the fastcdc package's compiled module is missing; reinstall fastcdc")
    if len(data) <= min_size:
        if len(data):
            yield 0, len(data)
        return
    for c in _fastcdc(data, min_size, avg_size, max_size, False, None):
        yield c.offset, c.length
