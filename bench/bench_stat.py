"""Cold stat storm on fresh mounts: casstore (this checkout) vs a baseline checkout vs
squashfuse_ll, in one run, interleaved.

The data is bench_fuse.py's (20,000 small files of 2-20 KB in 200 folders, one
160 MiB file).  Each round mounts every target afresh (a new daemon, no kernel
dentries or attributes) and stats every small file once.  Unlike bench_fuse.py the
page cache is *not* dropped, so the machine's other jobs are not disturbed: the
figure is the daemons' own cold cost (a stat that reads a pack shows as CPU, not as
disk waits).  Medians over the rounds; ratio = casstore / squashfuse_ll.

Run as root (mounting):
    python bench/bench_stat.py --baseline /path/to/other/checkout [--rounds 5]
Writes bench/results/stat.json and bench/results/stat.md.
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
sys.path.insert(0, str(HERE.parent))

from bench.bench_fuse import (  # noqa: E402
    Cas,
    Squash,
    make_data,
    mounted,
    stat_storm,
    wait_mounted,
)


class CasAt(Cas):
    """The casstore mount run from the code at ``code`` (a checkout's root)."""

    def __init__(self, data: Path, work: Path, code: Path, name: str) -> None:
        super().__init__(data, work)
        self.code, self.name = code, name
        self.mp = work / f"mnt-{name}"
        self.mp.mkdir(exist_ok=True)

    def _cas(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.code))
        # cwd: not a checkout (``python -m`` puts the working directory first on sys.path)
        subprocess.run([sys.executable, "-m", "casstore", *args], check=True, env=env,
                       cwd="/", stdout=subprocess.DEVNULL)

    def fresh(self) -> Path:
        if mounted(self.mp):
            self._cas("umount", "--config", str(self.config), str(self.mp))
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        shutil.rmtree(self.work / "state", ignore_errors=True)
        self._cas("mount", "--config", str(self.config), "bench", str(self.mp))
        wait_mounted(self.mp)
        return self.mp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    make_data(data)
    code = HERE.parent
    targets = [Squash(data, args.work),
               CasAt(data, args.work, args.baseline.resolve(), "baseline"),
               CasAt(data, args.work, code, "casstore")]
    runs: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for r in range(args.rounds):
            for t in targets:
                root = t.fresh()
                rate, _unit = stat_storm(root)
                runs[t.name].append(rate)
                t.close()
                print(f"  round {r + 1}  {t.name:14s} {rate:,.0f} stat/s", flush=True)
    finally:
        for t in targets:
            t.close()
    med = {n: statistics.median(v) for n, v in runs.items()}
    load = os.getloadavg()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
            "baseline": str(args.baseline), "rounds": args.rounds,
            "loadavg": [round(x, 2) for x in load]}
    out = HERE / "results"
    (out / "stat.json").write_text(json.dumps({"meta": meta, "runs": runs, "median": med},
                                              indent=1))
    sq = med["squashfuse_ll"]
    lines = [f"# Cold stat storm on fresh mounts ({meta['date']}, {meta['host']})", "",
             f"20,000 small files, one `lstat` each, on a fresh mount per round; page cache "
             f"kept (not dropped).  Median of {args.rounds} interleaved rounds; load average "
             f"at the end {load[0]:.1f} on 2 shared cores.  baseline = `{args.baseline}`.", "",
             "| target | stat/s (median) | runs | / squashfuse_ll |", "|---|---|---|---|"]
    for n, v in runs.items():
        cells = ", ".join(f"{x:,.0f}" for x in v)
        lines.append(f"| {n} | {med[n]:,.0f} | {cells} | {med[n] / sq:.2f}x |")
    (out / "stat.md").write_text("\n".join(lines) + "\n")
    print((out / "stat.md").read_text())


if __name__ == "__main__":
    main()
