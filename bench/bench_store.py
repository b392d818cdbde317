"""Store throughput and dedup, side by side with `tar -c | zstd -3` in the same run.

Usage: python bench/bench_store.py [--sysimage A.so] [--sysimage2 B.so]
          [--tree-a DIR --tree-b DIR [--tree-by-avg]] [--out bench/results/store]

Defaults: the stock sys.so of the Julia prefix (tools/install-julia) as the large
file; for the second sysimage and depot versions, whatever builds exist in the
build cache.  --tree-by-avg also measures the tree dedup at each average chunk size
(by default only at the default settings).  Inputs are read once first so both
contenders start page-cache warm.  Results go to <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from casstore.store.restore import restore  # noqa: E402
from casstore.store.snapshot import put_paths  # noqa: E402
from casstore.store.writable import Store, StoreSettings  # noqa: E402

PREFIX = Path(os.environ.get("CAS_JULIA_PREFIX", "/var/cache/casstore/julia-1.5.3"))
STOCK = PREFIX / "lib/x86_64-linux-gnu/julia/sys.so"
BUILD_CACHE = Path(os.environ.get("CAS_BUILD_CACHE", "/var/cache/casstore/build"))


def warm(path: Path) -> int:
    """Read a file or tree once; return its byte count."""
    total = 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                           and not p.is_symlink()]
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total


def timed(fn) -> tuple[float, object]:
    """Wall time of fn(), after flushing earlier runs' dirty pages so they don't interfere."""
    os.sync()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median_of(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def baseline(path: Path, work: Path, repeat: int) -> dict:
    """tar -c | zstd -3 and back: what a user would otherwise reach for."""
    arc = work / "base.tar.zst"
    cmd = f"tar -C {path.parent} -cf - {path.name} | zstd -3 -q -f -o {arc}"
    puts, gets = [], []
    for _ in range(repeat):
        puts.append(timed(lambda: subprocess.run(cmd, shell=True, check=True))[0])
        out = work / "base-out"
        out.mkdir()
        unpack = f"zstd -d -q -c {arc} | tar -C {out} -xf -"
        gets.append(timed(lambda c=unpack: subprocess.run(c, shell=True, check=True))[0])
        shutil.rmtree(out)
    return {"put_s": median_of(puts), "get_s": median_of(gets),
            "stored_bytes": arc.stat().st_size}


def cas_round(path: Path, work: Path, settings: StoreSettings, repeat: int) -> dict:
    """Fresh put (new store each time), put of stored data, and get; medians."""
    puts, agains, gets = [], [], []
    for _ in range(repeat):
        shutil.rmtree(work / "store", ignore_errors=True)
        store = Store.init(work / "store", settings)
        t_put, oid = timed(lambda s=store: put_paths(s, [path]))
        puts.append(t_put)
        store.close()
    store = Store.open(work / "store")
    for _ in range(repeat):
        t_again, oid2 = timed(lambda: put_paths(store, [path]))
        assert oid == oid2
        agains.append(t_again)
    for _ in range(repeat):
        gets.append(timed(lambda: restore(store, oid, work / "out"))[0])
        (work / "out").unlink()
    n, _raw, stored = store.index.stats()
    store.close()
    shutil.rmtree(work / "store")
    return {"put_s": median_of(puts), "put_again_s": median_of(agains),
            "get_s": median_of(gets), "stored_bytes": stored, "objects": n}


CAS = [sys.executable, "-m", "casstore"]


def whole_process(path: Path, work: Path, repeat: int) -> dict:
    """`cas put` / `cas get` as commands (start-up included) against the tar/zstd
    pipelines, interleaved in one loop so that load changes hit both sides alike."""
    arc, store, out = work / "wp.tar.zst", work / "wp-store", work / "wp-out"
    tar_put = f"tar -C {path.parent} -cf - {path.name} | zstd -3 -q -f -o {arc}"
    tar_get = f"zstd -d -q -c {arc} | tar -C {out} -xf -"
    runs: dict[str, list[float]] = {"tar_put": [], "cas_put": [], "tar_get": [], "cas_get": []}
    loads = []
    oid = ""
    for _ in range(repeat):
        loads.append(round(os.getloadavg()[0], 2))
        runs["tar_put"].append(timed(lambda: subprocess.run(tar_put, shell=True, check=True))[0])
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run(CAS + ["-q", "--store", str(store), "init"], check=True,
                       capture_output=True)  # only cas init creates a store: not timed
        t, p = timed(lambda: subprocess.run(CAS + ["-q", "--store", str(store), "put",
                                                   str(path)], check=True,
                                                  capture_output=True, text=True))
        runs["cas_put"].append(t)
        oid = p.stdout.strip()
        out.mkdir()
        runs["tar_get"].append(timed(lambda: subprocess.run(tar_get, shell=True, check=True))[0])
        shutil.rmtree(out)
        runs["cas_get"].append(timed(lambda o=oid: subprocess.run(
            CAS + ["-q", "--store", str(store), "get", o, str(out)], check=True))[0])
        out.unlink()
    med = {k: statistics.median(v) for k, v in runs.items()}
    shutil.rmtree(store, ignore_errors=True)
    return {k: median_of(v) for k, v in runs.items()} | {
        "put_ratio": round(med["tar_put"] / med["cas_put"], 3),
        "get_ratio": round(med["tar_get"] / med["cas_get"], 3),
        "load_1min": loads}


def dedup(a: Path, b: Path, work: Path, settings: StoreSettings) -> dict:
    """Share of B's bytes already stored after A (by raw chunk bytes)."""
    store = Store.init(work / f"dd-{settings.chunk_avg}", settings)
    size_a = warm(a)
    put_paths(store, [a])
    n_a, raw_a, st_a = store.index.stats()
    put_paths(store, [b])
    n_b, raw_b, st_b = store.index.stats()
    size_b = warm(b)
    store.close()
    shutil.rmtree(work / f"dd-{settings.chunk_avg}")
    return {"b_bytes": size_b, "new_raw_bytes": raw_b - raw_a, "new_stored_bytes": st_b - st_a,
            "shared_fraction": round(1 - (raw_b - raw_a) / size_b, 4), "objects": n_b,
            "a_bytes": size_a, "objects_a": n_a, "new_objects": n_b - n_a,
            "stored_a_bytes": st_a}


AVGS = (64 << 10, 256 << 10, 1 << 20, 4 << 20)


def by_avg(avg: int) -> StoreSettings:
    """FastCDC min/avg/max = avg/4, avg, 4*avg (the default is 256 KiB/1 MiB/4 MiB)."""
    return StoreSettings(avg // 4, avg, avg * 4, durable=False)


def find_second_sysimage() -> Path | None:
    for p in sorted(BUILD_CACHE.rglob("sys*.so")):
        if p.stat().st_size > 50 << 20:
            return p
    return None


def mbps(nbytes: int, secs: float) -> float:
    return round(nbytes / secs / 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sysimage", type=Path, default=STOCK)
    ap.add_argument("--sysimage2", type=Path, default=None)
    ap.add_argument("--tree-a", type=Path, default=None)
    ap.add_argument("--tree-b", type=Path, default=None)
    ap.add_argument("--tree-by-avg", action="store_true",
                    help="tree dedup at 64 KiB/256 KiB/1 MiB/4 MiB average chunk sizes too")
    ap.add_argument("--out", type=Path, default=Path("bench/results/store"))
    ap.add_argument("--only-throughput", action="store_true",
                    help="Skip the dedup measurements.")
    ap.add_argument("--repeat", type=int, default=5,
                    help="Repetitions of each throughput measurement (medians reported).")
    args = ap.parse_args()
    results: dict = {"host": os.uname().nodename, "cores": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "git": subprocess.run(
                         ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse",
                          "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                     "load_before": [round(x, 2) for x in os.getloadavg()]}
    size = warm(args.sysimage)
    results["input"] = {"path": str(args.sysimage), "bytes": size}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        work = Path(d)
        base = baseline(args.sysimage, work, args.repeat)
        cas = cas_round(args.sysimage, work, StoreSettings(), args.repeat)
        results["repeat"] = args.repeat
        results["baseline_tar_zstd3"] = base | {
            "put_MBps": mbps(size, base["put_s"]["median"]),
            "get_MBps": mbps(size, base["get_s"]["median"])}
        results["cas"] = cas | {"put_MBps": mbps(size, cas["put_s"]["median"]),
                                "put_again_MBps": mbps(size, cas["put_again_s"]["median"]),
                                "get_MBps": mbps(size, cas["get_s"]["median"])}
        results["whole_process"] = whole_process(args.sysimage, work, args.repeat)
        if args.only_throughput:
            second = None
            args.tree_a = args.tree_b = None
        else:
            second = args.sysimage2 or find_second_sysimage()
        if second:
            warm(second)
            results["dedup_sysimages"] = {"a": str(args.sysimage), "b": str(second), "by_avg": {
                str(avg): dedup(args.sysimage, second, work, by_avg(avg)) for avg in AVGS}}
        if args.tree_a and args.tree_b:
            results["dedup_trees"] = {"a": str(args.tree_a), "b": str(args.tree_b),
                                      **dedup(args.tree_a, args.tree_b, work, StoreSettings())}
            if args.tree_by_avg:
                results["dedup_trees"]["by_avg"] = {
                    str(avg): dedup(args.tree_a, args.tree_b, work, by_avg(avg))
                    for avg in AVGS}
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


def report(r: dict) -> str:
    b, c = r["baseline_tar_zstd3"], r["cas"]
    lines = [f"# Store benchmark ({r['date']}, {r['cores']} cores, git {r.get('git', '?')}, "
             f"load before {r.get('load_before', '?')})", "",
             f"Input: `{r['input']['path']}`, {r['input']['bytes'] / 1e6:.1f} MB", "",
             f"Medians of {r.get('repeat', 1)} runs each.", "",
             "| operation | tar -c \\| zstd -3 | cas |", "|---|---|---|",
             f"| fresh put (MB/s) | {b['put_MBps']} | {c['put_MBps']} |",
             f"| put, already stored (MB/s) | - | {c['put_again_MBps']} |",
             f"| get / extract (MB/s) | {b['get_MBps']} | {c['get_MBps']} |",
             f"| stored bytes | {b['stored_bytes']} | {c['stored_bytes']} |", ""]
    if "whole_process" in r:
        w = r["whole_process"]
        lines += ["## Whole processes (start-up included), interleaved in one loop", "",
                  "`tar -c | zstd -3` and `zstd -dc | tar -x` against `cas put` (fresh "
                  "store, durable writes) and `cas get`; medians of "
                  f"{len(w['cas_put']['runs'])} runs, seconds (min-max).  1-minute load "
                  f"average at each run: {w['load_1min']}; after the benchmark: "
                  f"{r.get('load_after', '?')}.", "",
                  "| operation | tar/zstd (s) | cas (s) | speed vs tar/zstd |",
                  "|---|---|---|---|"]
        for op, base_k, cas_k, ratio in (("put", "tar_put", "cas_put", "put_ratio"),
                                          ("get", "tar_get", "cas_get", "get_ratio")):
            b_, c_ = w[base_k], w[cas_k]
            lines.append(f"| {op} | {b_['median']:.3f} ({b_['min']:.3f}-{b_['max']:.3f}) | "
                         f"{c_['median']:.3f} ({c_['min']:.3f}-{c_['max']:.3f}) | "
                         f"{w[ratio]:.2f}x |")
        lines.append("")
    if "dedup_sysimages" in r:
        lines += ["## Dedup between two sysimages, by FastCDC average chunk size", "",
                  f"A = `{r['dedup_sysimages']['a']}`, B = `{r['dedup_sysimages']['b']}`", "",
                  "| avg chunk | shared fraction of B | new stored bytes | objects "
                  "| objects for A | new objects for B |", "|---|---|---|---|---|---|"]
        for avg, d in r["dedup_sysimages"]["by_avg"].items():
            lines.append(f"| {int(avg) >> 10} KiB | {d['shared_fraction']:.3f} | "
                         f"{d['new_stored_bytes']} | {d['objects']} | "
                         f"{d.get('objects_a', '-')} | {d.get('new_objects', '-')} |")
        lines.append("")
    if "dedup_trees" in r:
        d = r["dedup_trees"]
        lines += ["## Dedup between two depot trees", "",
                  f"A = `{d['a']}`, B = `{d['b']}`: shared fraction of B "
                  f"{d['shared_fraction']:.3f}, new stored bytes {d['new_stored_bytes']}", ""]
        if "by_avg" in d:
            lines += [f"B is {d['b_bytes']} bytes; A alone is stored as "
                      f"{d['stored_a_bytes']} bytes in {d['objects_a']} objects "
                      "(default settings).", "",
                      "| avg chunk | shared fraction of B | new raw bytes | new stored bytes "
                      "| objects for A | new objects for B |", "|---|---|---|---|---|---|"]
            for avg, t in d["by_avg"].items():
                lines.append(f"| {int(avg) >> 10} KiB | {t['shared_fraction']:.4f} | "
                             f"{t['new_raw_bytes']} | {t['new_stored_bytes']} | "
                             f"{t['objects_a']} | {t['new_objects']} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
