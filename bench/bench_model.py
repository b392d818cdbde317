"""The node-side model without FUSE: the same calls the FUSE callbacks make, in process.

FUSE round trips and the page cache dominate bench_fuse.py and swing with the
load of a shared 2-core machine; this isolates what the Python model costs per
call, for the current tree and a baseline checkout side by side, interleaved,
in the same run (best of ``--rounds``).  It reuses bench_fuse.py's data and
signed release ("bench" in --work), so run that once first.

  python bench/bench_model.py --baseline /tmp/base
Writes bench/results/model.json and bench/results/model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r'''
import json, os, sys, time
from pathlib import Path
from casstore.client.config import load
from casstore.client.fuse.mount import build_fs
from casstore.client.selection import select
work, cache = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load(work / "client.toml")
cfg.cache_dir = cache
built = build_fs(select("bench", cfg, None, None), cfg)
fs = getattr(built, "fs", built)
data = work / "data"
small = sorted("/" + str(p.relative_to(data)) for p in (data / "small").rglob("*.jl"))
out = {}
t = time.perf_counter()
for p in small:
    fs.stat_bytes(p)
out["stat cold, us/call"] = (time.perf_counter() - t) / len(small) * 1e6
t = time.perf_counter()
for p in small:
    fs.stat_bytes(p)
out["stat warm, us/call"] = (time.perf_counter() - t) / len(small) * 1e6
t = time.perf_counter()
for d in sorted({p.rpartition("/")[0] for p in small}):
    fs.readdir(d)
out["readdir 200 dirs, ms"] = (time.perf_counter() - t) * 1e3
t = time.perf_counter()
for p in small[:5000]:
    fs.read(p, 131072, 0)
out["read 5k small, us/file"] = (time.perf_counter() - t) / 5000 * 1e6
size = (data / "big.so").stat().st_size
t = time.perf_counter()
for off in range(0, size, 131072):
    fs.read("/big.so", 131072, off)
out["sequential 160 MiB (cold cache), MiB/s"] = size / (time.perf_counter() - t) / 2**20
cache = getattr(built, "cache", None) or fs.cache
while not all(c.done for c in list(cache.copies.values())):  # incl. keeping a copy
    time.sleep(0.05)
t = time.perf_counter()
for off in range(0, size, 131072):
    fs.read("/big.so", 131072, off)
out["sequential 160 MiB (warm copy), MiB/s"] = size / (time.perf_counter() - t) / 2**20
cache.close()
print(json.dumps(out))
'''


def run(code: Path, work: Path) -> dict[str, float]:
    cache = work / "model-cache"
    shutil.rmtree(cache, ignore_errors=True)
    res = subprocess.run([sys.executable, "-c", CHILD, str(work), str(cache)], cwd=code,
                         env=dict(os.environ, PYTHONPATH=str(code)), capture_output=True,
                         text=True, check=True)
    shutil.rmtree(cache, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def best(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = max(vals) if "MiB/s" in k else min(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list] = {"baseline": [], "this tree": []}
    for _ in range(args.rounds):
        runs["baseline"].append(run(args.baseline.resolve(), args.work.resolve()))
        runs["this tree"].append(run(ROOT, args.work.resolve()))
    base, mine = best(runs["baseline"]), best(runs["this tree"])
    res = HERE / "results"
    (res / "model.json").write_text(json.dumps({"baseline": base, "this tree": mine,
                                                "runs": runs}, indent=1))
    lines = [f"# Node model without FUSE ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
             f"kernel {platform.release()})", "",
             "bench_fuse.py's data, ReleaseFS calls in process, best of "
             f"{args.rounds} interleaved rounds; baseline = the code before the vfs split.", "",
             "| measure | baseline | this tree |", "|---|---|---|"]
    for k in base:
        lines.append(f"| {k} | {base[k]:,.1f} | {mine[k]:,.1f} |")
    (res / "model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
