"""The object source read path, side by side with its baselines in the same run.

Usage: python bench/bench_sources.py [--out bench/results/sources]

Measures, page-cache warm, over a set of objects like a depot's (large chunks and
small packs):

* ``read_stored``: LocalSource's checked read (``O_NOFOLLOW|O_NONBLOCK`` open,
  ``fstat``, bounded ``os.read``) against the plain ``open().read()`` it replaced;
* ``fetch`` (read + decompress + BLAKE3): LocalSource against an ObjectCache hit in
  front of it (every hit is verified again, so a hit should cost about the same as
  a local read, not less).

Results go to <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from casstore.format.layout import object_path  # noqa: E402
from casstore.format.objects import ObjType  # noqa: E402
from casstore.sources import LocalSource, ObjectCache  # noqa: E402
from casstore.store.writable import Store, StoreSettings  # noqa: E402

RUNS = 7


def plain_read(root: Path, oid) -> bytes:
    """The read the old LocalSource did: follows symlinks, blocks on a FIFO, unbounded."""
    with open(object_path(root, oid), "rb") as f:
        return f.read()


def best(fn, oids) -> dict:
    runs = []
    for _ in range(RUNS):
        t = time.perf_counter()
        for o in oids:
            fn(o)
        runs.append(time.perf_counter() - t)
    return {"median": statistics.median(runs), "min": min(runs), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/sources")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.init(Path(tmp) / "store", StoreSettings(durable=False))
        half = os.urandom(512 << 10)
        big = [store.put_raw(ObjType.CHUNK, half + os.urandom(16) + bytes(512 << 10))
               for _ in range(64)]  # 1 MiB chunks, half compressible
        small = [store.put_raw(ObjType.CHUNK, os.urandom(2048) + bytes(2048))
                 for _ in range(2000)]  # 4 KiB packs
        src = LocalSource(store.root)
        cache = ObjectCache(src, Path(tmp) / "cache", 1 << 30)
        for o in big + small:  # warm the page cache and fill the object cache
            cache.fetch(o)
        rows = {}
        for label, oids in (("64 x 1 MiB chunks", big), ("2000 x 4 KiB objects", small)):
            rows[label] = {
                "read_stored: open().read() (old)": best(lambda o: plain_read(store.root, o),
                                                         oids),
                "read_stored: checked (new)": best(src.read_stored, oids),
                "fetch: LocalSource": best(src.fetch, oids),
                "fetch: ObjectCache hit": best(cache.fetch, oids),
            }
        cache.close()
        store.close()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cores": os.cpu_count(), "runs": RUNS, "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Source read path ({result['date']}, {result['cores']} cores, median of "
             f"{RUNS}, page cache warm)", "",
             "| objects | what | median s | min s |", "|---|---|---|---|"]
    for label, r in rows.items():
        for what, m in r.items():
            lines.append(f"| {label} | {what} | {m['median']:.4f} | {m['min']:.4f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
