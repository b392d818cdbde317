"""Whole-file fetch of a large file over an emulated WAN: this checkout's FileCache
against a baseline checkout's, in one run, interleaved.

The file is bench_fuse.py's 160 MiB of real shared libraries, stored in that
benchmark's store; Debian's nginx serves the store and the test harness's
LatencyProxy (25 ms each way) sits in front of it.  Each run starts cold (a fresh
object cache and file cache) and fills the whole-file copy through
``FileCache(ObjectCache(HTTPSource))``, as a mount does on a first read of a large
file: every chunk fetched, verified, decompressed and written.  Wall time from the
first read to the complete copy, and the process's CPU over it (the latency proxy
runs in this process too, so CPU is an upper bound), medians.

Run after bench/bench_fuse.py has prepared --work (or bench/bench_stat.py):
    python bench/bench_filecache.py --work /tmp/bench-fuse-work --baseline /path/to/checkout
Writes bench/results/filecache.json and bench/results/filecache.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from net_fixtures import LatencyProxy, Nginx  # noqa: E402

from casstore.format.objects import ObjectId  # noqa: E402
from casstore.sources import open_source  # noqa: E402
from casstore.sources.http import HTTPSettings  # noqa: E402
from casstore.view.vfs import VFS  # noqa: E402

DELAY = 0.025


def load_filecache(checkout: Path, name: str):
    """The FileCache class of another checkout (its module only; the rest is ours)."""
    spec = importlib.util.spec_from_file_location(name, checkout / "casstore/view/filecache.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.FileCache


def root_of(work: Path) -> ObjectId:
    from casstore.releases.release import unverified

    raw = (work / "store" / "releases" / "bench" / "000000000001.release").read_bytes()
    return ObjectId.parse(unverified(raw).root)


def fill_once(cls, url: str, root: ObjectId, tmp: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, bytes) of one cold whole-file fill of big.so."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    os.chmod(tmp, 0o700)
    source = open_source([url], cache_dir=tmp / "objects", cache_bytes=2 << 30,
                         http=HTTPSettings())
    cache = cls(source, tmp / "files", 2 << 30, 1 << 20)
    try:
        vfs = VFS(source, root, cache=cache)
        node = vfs.lookup("big.so")
        t, c = time.perf_counter(), time.process_time()
        vfs.read(node, 0, 4096)  # the first read starts the whole-file copy
        copy = next(iter(cache.copies.values()))
        assert copy.thread is not None
        copy.thread.join()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert copy.complete, "the copy did not complete"
        return wall, cpu, node.entry.size
    finally:
        cache.close()
        source.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="bench_fuse.py's work folder")
    ap.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = root_of(args.work)
    classes = {"baseline": load_filecache(args.baseline.resolve(), "baseline_filecache"),
               "casstore": load_filecache(ROOT, "casstore_filecache")}
    nginx = Nginx(args.work / "store", args.work / "fc-nginx").start()
    proxy = LatencyProxy(nginx.port, DELAY).start()
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in classes}
    size = 0
    try:
        for r in range(args.rounds):
            for name, cls in classes.items():
                wall, cpu, size = fill_once(cls, f"{proxy.url}/store", root,
                                            args.work / "fc-tmp")
                runs[name].append((wall, cpu))
                print(f"  round {r + 1}  {name:9s} {wall:6.2f} s  {cpu:5.2f} CPU-s", flush=True)
    finally:
        proxy.stop()
        nginx.stop()
        shutil.rmtree(args.work / "fc-tmp", ignore_errors=True)
    med = {n: {"wall_s": statistics.median(w for w, _ in v),
               "cpu_s": statistics.median(c for _, c in v)} for n, v in runs.items()}
    load = os.getloadavg()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
            "baseline": str(args.baseline), "rounds": args.rounds, "bytes": size,
            "delay_each_way_s": DELAY, "loadavg": [round(x, 2) for x in load]}
    out = HERE / "results"
    (out / "filecache.json").write_text(json.dumps({"meta": meta, "median": med,
                                                    "runs": runs}, indent=1))
    b, c = med["baseline"], med["casstore"]
    lines = [f"# Whole-file fetch over an emulated WAN ({meta['date']}, {meta['host']})", "",
             f"{size / 2**20:.0f} MiB file, cold object and file caches, nginx behind a "
             f"{DELAY * 1000:.0f} ms-each-way latency proxy; median of {args.rounds} "
             f"interleaved rounds; load average at the end {load[0]:.1f} on "
             f"{os.cpu_count()} shared cores.  baseline = `{args.baseline}`'s FileCache.", "",
             "| FileCache | wall | MiB/s | CPU (this process, proxy included) |",
             "|---|---|---|---|"]
    for n, m in (("baseline", b), ("casstore", c)):
        lines.append(f"| {n} | {m['wall_s']:.2f} s | {size / 2**20 / m['wall_s']:,.0f} | "
                     f"{m['cpu_s']:.2f} s |")
    lines.append("")
    lines.append(f"Ratio casstore / baseline, wall: {c['wall_s'] / b['wall_s']:.2f}x.")
    (out / "filecache.md").write_text("\n".join(lines) + "\n")
    print((out / "filecache.md").read_text())


if __name__ == "__main__":
    main()
