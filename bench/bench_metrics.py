"""What the client metrics cost on the read path, side by side with a baseline.

Usage: python bench/bench_metrics.py [--out bench/results/metrics]

* ``LocalSource.read_stored`` with its counters (objects, bytes) against the same
  checked read without them (the code before metrics, as a subclass), interleaved
  in one process, page cache warm: 2000 x 4 KiB objects (where a per-object cost
  shows most) and 64 x 1 MiB chunks;
* one ``SourceCounters.fetched`` call, alone and with 4 threads counting at once,
  against a ``threading.Lock``-guarded counter pair (what a plain registry does).

Results go to <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from casstore.errors import ObjectCorrupt, ObjectMissing  # noqa: E402
from casstore.fileio.safeio import read_regular  # noqa: E402
from casstore.format.layout import MAX_STORED_SIZE, object_relpath  # noqa: E402
from casstore.format.objects import ObjType  # noqa: E402
from casstore.sources.counters import SourceCounters  # noqa: E402
from casstore.sources.local import LocalSource  # noqa: E402
from casstore.store.writable import Store, StoreSettings  # noqa: E402

RUNS = 15


class Uncounted(LocalSource):
    """read_stored as it was before the metrics (the baseline)."""

    def read_stored(self, oid):  # type: ignore[override]
        data = read_regular(self.root / object_relpath(oid), MAX_STORED_SIZE,
                            f"object {oid}", corrupt=ObjectCorrupt)
        if data is None:
            raise ObjectMissing(f"object {oid} is missing from {self.root}")
        return data


def interleaved(fns: dict, oids) -> dict:
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(RUNS):
        for name, fn in fns.items():
            t = time.perf_counter()
            for o in oids:
                fn(o)
            runs[name].append(time.perf_counter() - t)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in runs.items()}


class Locked:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects = self.bytes = 0

    def fetched(self, n: int) -> None:
        with self.lock:
            self.objects += 1
            self.bytes += n


def per_call(counter, threads: int, n: int = 200_000) -> float:
    """Seconds per ``fetched`` call with ``threads`` threads counting at once."""
    def work() -> None:
        f = counter.fetched
        for _ in range(n):
            f(4096)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return (time.perf_counter() - t) / (n * threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/metrics")
    args = ap.parse_args()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.init(Path(tmp) / "store", StoreSettings(durable=False))
        big = [store.put_raw(ObjType.CHUNK, os.urandom(1 << 20)) for _ in range(64)]
        small = [store.put_raw(ObjType.CHUNK, os.urandom(4096)) for _ in range(2000)]
        counted, plain = LocalSource(store.root), Uncounted(store.root)
        for o in big + small:
            plain.read_stored(o)  # page cache warm
        for label, oids in (("2000 x 4 KiB objects", small), ("64 x 1 MiB chunks", big)):
            rows[label] = interleaved({"read_stored, no counters (baseline)": plain.read_stored,
                                       "read_stored, counted": counted.read_stored}, oids)
        store.close()
    calls = {}
    for threads in (1, 4):
        calls[f"{threads} thread(s)"] = {
            "Lock-guarded pair (baseline) us": min(per_call(Locked(), threads)
                                                   for _ in range(3)) * 1e6,
            "SourceCounters.fetched us": min(per_call(SourceCounters("x"), threads)
                                             for _ in range(3)) * 1e6}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cores": os.cpu_count(), "runs": RUNS, "rows": rows, "calls": calls}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Client metrics on the read path ({result['date']}, {result['cores']} cores, "
             f"{RUNS} interleaved runs, page cache warm)", "",
             "| objects | what | median s | min s |", "|---|---|---|---|"]
    for label, r in rows.items():
        for what, m in r.items():
            lines.append(f"| {label} | {what} | {m['median']:.4f} | {m['min']:.4f} |")
    lines += ["", "| counting threads | Lock-guarded pair (baseline) | SourceCounters.fetched |",
              "|---|---|---|"]
    for label, c in calls.items():
        lines.append(f"| {label} | {c['Lock-guarded pair (baseline) us']:.3f} us | "
                     f"{c['SourceCounters.fetched us']:.3f} us |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
