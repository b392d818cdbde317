"""Mount + real Julia start of the example job: cold client cache with and without the
release's prefetch list, against a warm client cache, local store.

The store is a local folder, so "cold" means an empty client ``cache_dir`` (no
whole-file copies), not a cold page cache: this measures what the replay costs or
saves on the node itself.  The WAN case (25 ms each way) needs the HTTP source:
run h9client's bench_http with and without ``--no-prefetch`` once it is merged.

Each run is ``cas exec demo --arch x86-64 [--no-prefetch] -- julia jetjob.jl``
(mount, job, unmount) as a whole process; modes are interleaved, N rounds.

Run as root:  python bench/bench_prefetch.py [--work /tmp/bench-prefetch] [--rounds 3]
Writes bench/results/prefetch.json and bench/results/prefetch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAS = [sys.executable, "-m", "casstore"]
JULIA = "/depot/julia/bin/julia"


def cas(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CAS, *args], capture_output=True, text=True, check=True,
                          cwd=ROOT, **kw)


def prepare(work: Path) -> dict:
    """Build and release the example depot (cached sysimages), the events file."""
    work.mkdir(parents=True, exist_ok=True)
    key, store = work / "k", work / "store"
    if not key.exists():
        cas("keygen", str(key))
    summary = json.loads(cas("--store", str(store), "--json", "depot", "build",
                             "examples/depot.toml", "--out", str(work / "build"),
                             "--release", "demo", "--key", str(key)).stdout)
    events = work / "events.txt"
    if not events.exists():
        run(work, "setup", [JULIA, "--startup-file=no", "/depot/jobs/gen_events.jl",
                            str(events), "300"], [])
    return summary


def config(work: Path, name: str) -> Path:
    cfg = work / f"{name}.toml"
    cfg.write_text(f'trusted_keys = ["{work}/k.pub"]\ncache_dir = "{work}/cache-{name}"\n'
                   f'state_dir = "{work}/state-{name}"\n')
    return cfg


def run(work: Path, name: str, argv: list[str], extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
    scratch = work / f"scratch-{name}"
    scratch.mkdir(exist_ok=True)
    env["JULIA_DEPOT_PATH"] = f"{scratch}:/depot"
    t0 = time.monotonic()
    p = subprocess.run([*CAS, "--store", str(work / "store"), "-q", "exec", "demo",
                        "--config", str(config(work, name)), "--arch", "x86-64", *extra,
                        "--", *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - t0
    if p.returncode != 0 or (name != "setup" and "CHECKSUM" not in p.stdout):
        raise SystemExit(f"{name} failed: {p.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-prefetch"))
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    summary = prepare(a.work)
    job = [JULIA, "--startup-file=no", "/depot/jobs/jetjob.jl", str(a.work / "events.txt")]
    modes = {"cold, no prefetch": ["--no-prefetch"], "cold, prefetch": [], "warm": []}
    times: dict[str, list[float]] = {m: [] for m in modes}
    run(a.work, "warm", job, [])  # fills the warm cache once
    for _r in range(a.rounds):
        for mode, extra in modes.items():
            name = mode.replace(", ", "-").replace(" ", "")
            if mode != "warm":
                shutil.rmtree(a.work / f"cache-{name}", ignore_errors=True)
            times[mode].append(run(a.work, name if mode != "warm" else "warm", job, extra))
    med = {m: round(statistics.median(v), 3) for m, v in times.items()}
    out = {"host": platform.node(), "cpus": os.cpu_count(), "rounds": a.rounds,
           "release_prefetch": summary.get("prefetch"), "wall_s": times, "median_s": med}
    res = HERE / "results"
    (res / "prefetch.json").write_text(json.dumps(out, indent=1))
    lines = ["# Prefetch list replay: mount + Julia job (local store, x86-64 variant)", "",
             "| mode | median wall (s) | runs (s) | vs warm |", "|---|---|---|---|"]
    for m, v in times.items():
        lines.append(f"| {m} | {med[m]} | {', '.join(f'{x:.2f}' for x in v)} | "
                     f"{med[m] / med['warm']:.2f}x |")
    (res / "prefetch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
