"""The HTTP source against Debian's nginx, side by side with its baselines in one run.

Usage: python bench/bench_http.py [--out bench/results/http]

A store of small objects (like a depot's packs and trees) and 1 MiB chunks is
served by nginx on loopback, directly and through the test harness's latency proxy
(25 ms each way, an emulated WAN: this kernel has no netem).  Measured, cold client
cache each run:

* ``LocalSource.fetch`` of every object (the folder baseline, page cache warm);
* raw aiohttp GETs of the same files, as concurrent as the source (the HTTP
  baseline: no verification, no fail-over bookkeeping);
* ``HTTPSource.fetch`` one object after another (what a naive reader pays);
* ``prefetch`` through the object cache (concurrent, verified, written to disk).

Results go to <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from net_fixtures import LatencyProxy, Nginx  # noqa: E402

from casstore.format.layout import object_relpath  # noqa: E402
from casstore.format.objects import ObjType  # noqa: E402
from casstore.sources import LocalSource, open_source, prefetch  # noqa: E402
from casstore.sources.http import HTTPSettings, HTTPSource  # noqa: E402
from casstore.store.writable import Store, StoreSettings  # noqa: E402

RUNS = 3
DELAY = 0.025
PARALLEL = 16


def timed(fn) -> dict:
    runs = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return {"median": statistics.median(runs), "min": min(runs), "runs": runs}


def raw_gets(base: str, oids) -> None:
    async def go() -> None:
        sem = asyncio.Semaphore(PARALLEL)
        async with aiohttp.ClientSession() as s:
            async def one(o) -> None:
                async with sem, s.get(base + "/" + object_relpath(o)) as r:
                    await r.read()
            await asyncio.gather(*(one(o) for o in oids))
    asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/http")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store.init(tmp / "store", StoreSettings(durable=False))
        small = [store.put_raw(ObjType.CHUNK, os.urandom(4096)) for _ in range(400)]
        big = [store.put_raw(ObjType.CHUNK, os.urandom(1 << 20)) for _ in range(16)]
        nginx = Nginx(tmp / "store", tmp / "nginx").start()
        lag = LatencyProxy(nginx.port, DELAY).start()
        results = []
        try:
            for link, base in (("loopback", nginx.url), (f"{DELAY * 1000:.0f} ms each way",
                                                          f"{lag.url}/store")):
                for label, oids in (("400 x 4 KiB", small), ("16 x 1 MiB", big)):
                    seq = oids if link == "loopback" else oids[:40]
                    rows = _measure(tmp, base, oids, seq)
                    for what, r in rows.items():
                        results.append({"link": link, "objects": label, "what": what, **r})
                        print(link, label, what, f"{r['median']:.3f}", flush=True)
        finally:
            lag.stop()
            nginx.stop()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out + ".json").write_text(json.dumps({"when": stamp, "rows": results}, indent=1))
    lines = [f"# HTTP source vs nginx ({stamp}, 2 cores shared, median of {RUNS}, "
             f"cold client cache, parallel {PARALLEL})", "",
             "| link | objects | what | median s | min s |", "|---|---|---|---|---|"]
    lines += [f"| {r['link']} | {r['objects']} | {r['what']} | {r['median']:.3f} | "
              f"{r['min']:.3f} |" for r in results]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


def _measure(tmp: Path, base: str, oids, seq) -> dict:
    local = LocalSource(tmp / "store")
    out = {"LocalSource.fetch, one by one (folder baseline)":
           timed(lambda: [local.fetch(o) for o in oids]),
           "raw aiohttp GETs, concurrent (HTTP baseline, unverified)":
           timed(lambda: raw_gets(base, oids))}

    def one_by_one() -> None:
        src = HTTPSource([base], HTTPSettings(parallel=PARALLEL))
        try:
            for o in seq:
                src.fetch(o)
        finally:
            src.close()
    out[f"HTTPSource.fetch, one by one ({len(seq)} objects)"] = timed(one_by_one)
    def prefetched() -> None:  # a new, empty cache folder each run
        src = open_source([base], cache_dir=tmp / f"cache-{time.monotonic_ns()}",
                          cache_bytes=1 << 30,
                          http=HTTPSettings(parallel=PARALLEL))
        try:
            res = prefetch(src, oids)
            assert res is not None and res.fetched == len(oids), res
        finally:
            src.close()
    out["prefetch into the object cache, concurrent, verified"] = timed(prefetched)
    return out


if __name__ == "__main__":
    main()
