"""The reachable-objects walk (fsck, gc, push/pull, publish, mirror) against a baseline.

Usage: python bench/bench_walk.py [--baseline-rev main | --baseline DIR] [--repeat 5]
          [--files 20000] [--out bench/results/walk]

One store (written by this checkout) holds a release of a synthetic depot-like tree:
``--files`` small files in nested folders (packed, FORMAT §4.1) plus a few
multi-chunk files (blob manifests), so the walk, not the payload, dominates.  The
same commands then run, interleaved, once with this checkout's code and once with
the baseline's (a ``git archive`` of ``--baseline-rev`` by default, or a checkout
given as ``--baseline``), both on that store:

* whole processes: ``cas fsck``, ``cas gc --dry-run``, ``cas mirror`` into a fresh
  folder (start-up included);
* in-process: the push walk (``local_reachable``) alone, timed inside the child.

Every command starts after ``sync`` (the previous one's writes are not charged to
it), and the two sides alternate which goes first.  Results go to <out>.json and
<out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WALK = """
import sys, time
from casstore.distribute.transfer import local_reachable
from casstore.releases.release import load_unverified
from casstore.store.writable import Store
store = Store.open(sys.argv[1])
rel = load_unverified(store, "app", None)
t = time.perf_counter()
n = len(local_reachable(store, rel))
print(time.perf_counter() - t, n)
"""


def make_tree(root: Path, files: int) -> None:
    """Nested folders of small files, and a few files of several chunks."""
    rnd = random.Random(16)
    per_dir = 20
    for i in range(files):
        d = root / f"pkg{i // 2000}" / f"src{(i // per_dir) % 100}" / f"m{i // per_dir}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.jl").write_bytes(rnd.randbytes(rnd.randint(100, 3000)))
    for i in range(4):
        (root / f"big{i}.bin").write_bytes(rnd.randbytes(6 << 20))


def run(code: Path, args: list[str], *, inline: str | None = None) -> tuple[float, str]:
    """Wall time and stdout of one ``python -m casstore`` (or ``-c inline``) process
    running the code at ``code``."""
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CAS_DEBUG", None)
    cmd = [sys.executable, "-c", inline, *args] if inline else \
        [sys.executable, "-m", "casstore", *args]
    os.sync()  # the previous command's dirty pages (a mirror writes ~100 MB) are not ours
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=3600)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with {code}: {p.stderr.strip()[-500:]}")
    return wall, p.stdout


def stats(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs),
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", default="main")
    ap.add_argument("--baseline", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("bench/results/walk"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-walk-") as t:
        tmp = Path(t)
        base = a.baseline
        if base is None:
            base = tmp / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline_rev],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        store, src = tmp / "store", tmp / "src"
        make_tree(src, a.files)
        run(ROOT, ["--store", str(store), "init"])
        tree = run(ROOT, ["--store", str(store), "-q", "put", str(src), "--name", "app"])[1]
        run(ROOT, ["keygen", str(tmp / "k")])
        run(ROOT, ["--store", str(store), "release", "create", "app", tree.strip(),
                   "--key", str(tmp / "k")])
        shutil.rmtree(src)
        sides = {"this checkout": ROOT, f"baseline ({a.baseline or a.baseline_rev})": base}
        res: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
        objects = 0
        loads = []
        for i in range(a.repeat):
            loads.append(round(os.getloadavg()[0], 2))
            order = list(sides.items())
            for side, code in (order if i % 2 == 0 else order[::-1]):  # neither always first
                r = res[side]
                r.setdefault("cas fsck (process)", []).append(
                    run(code, ["--store", str(store), "fsck"])[0])
                r.setdefault("cas gc --dry-run (process)", []).append(
                    run(code, ["--store", str(store), "gc", "--dry-run"])[0])
                dest = tmp / "mirror"
                shutil.rmtree(dest, ignore_errors=True)
                r.setdefault("cas mirror, fresh folder (process)", []).append(
                    run(code, ["mirror", str(store), str(dest)])[0])
                secs, n = run(code, [str(store)], inline=_WALK)[1].split()
                r.setdefault("push walk, local_reachable (in-process)", []).append(float(secs))
                objects = int(n)
    doc = {"files": a.files, "objects": objects, "repeat": a.repeat, "load": loads,
           "results": {s: {k: stats(v) for k, v in r.items()} for s, r in res.items()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    this, other = list(doc["results"].values())
    lines = [f"# Reachable walk: {a.files} small files + 4 multi-chunk files, "
             f"{objects} reachable objects",
             "", f"Median of {a.repeat} interleaved runs; load average per round: {loads}.",
             "", f"| what | this checkout (s) | {list(sides)[1]} (s) | ratio |",
             "|---|---|---|---|"]
    for k in this:
        m, b = this[k]["median"], other[k]["median"]
        lines.append(f"| {k} | {m:.3f} | {b:.3f} | {b / m:.2f}x |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
