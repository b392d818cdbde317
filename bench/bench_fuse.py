"""FUSE benchmark: direct disk vs squashfuse_ll (C baseline) vs the casstore mount.

Same data, same run: 20,000 small files (2-20 KB) in 200 folders and one 160 MiB
file made of real shared libraries.  Workloads: a stat storm over all 20,000
files, reading 5,000 small files, a sequential read of the big file, and an mmap
touch of every page.  "cold" = page cache dropped and the FUSE daemons (and the
casstore file cache) fresh; "warm" = best of three passes right after.

Run as root (drop_caches, mounting):  python bench/bench_fuse.py
Writes bench/results/fuse.json and bench/results/fuse.md.

``--follow``: the casstore mount pinned (baseline) against the same release mounted
with ``follow = true`` (real opens, 60 s kernel timeouts), warm, plus each workload
again once the kernel timeouts have lapsed (no page cache drop, so other jobs on
the machine are not disturbed).  Writes bench/results/fuse-follow.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

N_FILES, N_DIRS, N_READ = 20_000, 200, 5_000
BIG_MIB = 160
PAGE = 4096
WARM_RUNS = 3


# -- data ------------------------------------------------------------------------
def make_data(data: Path) -> None:
    """Small files of 2-20 KB, and a big file concatenated from real .so files."""
    if (data / ".complete").exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    rnd = random.Random(42)
    for i in range(N_FILES):
        d = data / "small" / f"d{i % N_DIRS:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.jl").write_bytes(rnd.randbytes(rnd.randrange(2048, 20480)))
    libs = sorted(p for p in Path("/usr/lib/x86_64-linux-gnu").rglob("*.so*")
                  if p.is_file() and not p.is_symlink())
    with open(data / "big.so", "wb") as out:
        while out.tell() < BIG_MIB << 20:
            for lib in libs:
                out.write(lib.read_bytes())
                if out.tell() >= BIG_MIB << 20:
                    break
    (data / ".complete").touch()


def small_files(root: Path) -> list[Path]:
    return [root / "small" / f"d{i % N_DIRS:03d}" / f"f{i:05d}.jl" for i in range(N_FILES)]


# -- workloads -------------------------------------------------------------------
def stat_storm(root: Path) -> tuple[float, str]:
    paths = small_files(root)
    t = time.perf_counter()
    for p in paths:
        os.lstat(p)
    return len(paths) / (time.perf_counter() - t), "stat/s"


def read_small(root: Path) -> tuple[float, str]:
    paths = small_files(root)[::N_FILES // N_READ][:N_READ]
    t = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
    return len(paths) / (time.perf_counter() - t), "files/s"


def seq_read(root: Path) -> tuple[float, str]:
    buf = bytearray(1 << 20)
    n = 0
    t = time.perf_counter()
    with open(root / "big.so", "rb", buffering=0) as f:
        while (k := f.readinto(buf)) > 0:
            n += k
    return n / (1 << 20) / (time.perf_counter() - t), "MiB/s"


def mmap_touch(root: Path) -> tuple[float, str]:
    t = time.perf_counter()
    with open(root / "big.so", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        size = len(m)
        total = 0
        for off in range(0, size, PAGE):
            total += m[off]
    return size / (1 << 20) / (time.perf_counter() - t), "MiB/s"


WORKLOADS: dict[str, Callable[[Path], tuple[float, str]]] = {
    "stat storm, 20k files": stat_storm,
    "read 5k small files": read_small,
    f"sequential read {BIG_MIB} MiB": seq_read,
    "mmap touch every page": mmap_touch,
}


# -- targets ---------------------------------------------------------------------
def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def mounted(mp: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mp) for line in f)


def wait_mounted(mp: Path) -> None:
    deadline = time.monotonic() + 30
    while not mounted(mp):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mp} did not mount")
        time.sleep(0.02)


def umount(mp: Path) -> None:
    if mounted(mp):
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
        deadline = time.monotonic() + 10
        while mounted(mp) and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(0.2)


class Direct:
    name = "direct disk"

    def __init__(self, data: Path) -> None:
        self.root = data

    def fresh(self) -> Path:
        return self.root

    def close(self) -> None:
        pass


class Squash:
    name = "squashfuse_ll"

    def __init__(self, data: Path, work: Path) -> None:
        self.img = work / "data.sqfs"
        self.mp = work / "mnt-sqfs"
        self.mp.mkdir(exist_ok=True)
        if not self.img.exists():
            subprocess.run(["mksquashfs", str(data), str(self.img), "-comp", "zstd", "-noappend",
                            "-quiet", "-no-progress"], check=True)

    def fresh(self) -> Path:
        umount(self.mp)
        subprocess.run(["squashfuse_ll", str(self.img), str(self.mp)], check=True)
        wait_mounted(self.mp)
        return self.mp

    def close(self) -> None:
        umount(self.mp)


class Cas:
    name = "casstore"

    def __init__(self, data: Path, work: Path, follow: bool = False) -> None:
        from casstore.releases.release import Release, keygen, load_secret, sign
        from casstore.store.snapshot import put_paths
        from casstore.store.writable import Store

        self.work = work
        self.mp = work / "mnt-cas"
        self.mp.mkdir(exist_ok=True)
        self.config = work / "client.toml"
        store_dir = work / "store"
        if not (work / "release.key").exists():
            shutil.rmtree(store_dir, ignore_errors=True)
            store = Store.open(store_dir, create=True)
            root = put_paths(store, [data])
            keygen(work / "release.key")
            now = int(time.time())
            rel = Release("bench", 1, str(root), now, now + 10 * 365 * 86400)
            store.write_release("bench", 1, sign(rel, load_secret(work / "release.key")))
            store.close()
        self.config.write_text('trusted_keys = ["release.key.pub"]\nsource = "store"\n'
                               'cache_dir = "cache"\nstate_dir = "state"\n'
                               + ('follow = true\nttl = "1h"\n' if follow else ''))
        if follow:
            self.name = "casstore-follow"

    def _cas(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "casstore", *args], check=True, env=env,
                       stdout=subprocess.DEVNULL)

    def fresh(self) -> Path:
        if mounted(self.mp):
            self._cas("umount", "--config", str(self.config), str(self.mp))
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        self._cas("mount", "--config", str(self.config), "bench", str(self.mp))
        wait_mounted(self.mp)
        time.sleep(1.5)  # the daemon raises read_ahead_kb right after INIT
        return self.mp

    def close(self) -> None:
        if mounted(self.mp):
            self._cas("umount", "--config", str(self.config), str(self.mp))


# -- driver ----------------------------------------------------------------------
def measure(target, cold: bool) -> dict[str, dict[str, float | str]]:
    out: dict[str, dict[str, float | str]] = {}
    for label, fn in WORKLOADS.items():
        res: dict[str, float | str] = {}
        if cold:
            drop_caches()
            root = target.fresh()
            drop_caches()
            res["cold"], res["unit"] = fn(root)
        else:
            root = target.fresh()
        fn(root)  # make sure it is warm
        best = max(fn(root)[0] for _ in range(WARM_RUNS))
        res["warm"], res["unit"] = best, fn(root)[1] if "unit" not in res else res["unit"]
        out[label] = res
        print(f"  {target.name:14s} {label:26s} " + "  ".join(
            f"{k}={v:,.0f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return out


def to_markdown(results: dict, meta: dict) -> str:
    names = list(results)
    lines = [f"# FUSE benchmark ({meta['date']}, {meta['host']})", "",
             f"Data: {N_FILES:,} files of 2-20 KB in {N_DIRS} folders; one {BIG_MIB} MiB file "
             "of real shared libraries.  warm = best of 3 passes; cold = caches dropped, "
             "daemon and casstore file cache fresh.  Ratio = casstore / squashfuse_ll.", "",
             "| workload | " + " | ".join(names) + " | ratio warm | ratio cold |",
             "|---|" + "---|" * (len(names) + 2)]
    for label in WORKLOADS:
        cells = []
        for n in names:
            r = results[n][label]
            cold = f"{r['cold']:,.0f} / " if "cold" in r else ""
            cells.append(f"{cold}{r['warm']:,.0f} {r['unit']}")
        cas, sq = results["casstore"][label], results["squashfuse_ll"][label]
        rw = cas["warm"] / sq["warm"]
        rc = f"{cas['cold'] / sq['cold']:.2f}x" if "cold" in cas else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {rw:.2f}x | {rc} |")
    lines += ["", "Cells are `cold / warm`.  Target: casstore >= 0.5x squashfuse_ll warm.",
              "Cold figures swing about +-30% between runs (2 vCPU, unpinned)."]
    return "\n".join(lines) + "\n"


def measure_follow(data: Path, work: Path) -> None:
    """Pinned vs following casstore mount, side by side (see the module docstring)."""
    from casstore.client.fuse.mount import FOLLOW_TIMEOUT_S

    results: dict[str, dict] = {}
    for follow in (False, True):
        t = Cas(data, work, follow)
        # separate mount points: the follow mount must not reuse the pinned one's cache
        root = t.fresh()
        try:
            for label, fn in WORKLOADS.items():
                fn(root)
                warm = max(fn(root)[0] for _ in range(WARM_RUNS))
                time.sleep(FOLLOW_TIMEOUT_S + 1)  # the following mount's timeouts lapse
                lapsed, unit = fn(root)
                r = results.setdefault(t.name, {}).setdefault(label, {"unit": unit})
                r["warm"] = max(r.get("warm", 0.0), warm)
                r["lapsed"] = max(r.get("lapsed", 0.0), lapsed)
                print(f"  {t.name:16s} {label:26s} warm={warm:,.0f} after {FOLLOW_TIMEOUT_S:g} s"
                      f"={lapsed:,.0f} {unit}", flush=True)
        finally:
            t.close()
    meta = {"date": time.strftime("%Y-%m-%d"), "host": f"{platform.node()} "
            f"{os.cpu_count()} CPUs, kernel {platform.release()}", "files": N_FILES,
            "big_mib": BIG_MIB, "warm_runs": WARM_RUNS, "follow_timeout_s": FOLLOW_TIMEOUT_S}
    out = HERE / "results"
    (out / "fuse-follow.json").write_text(json.dumps({"meta": meta, "results": results},
                                                     indent=1))
    pin, fol = results["casstore"], results["casstore-follow"]
    lines = [f"# Following vs pinned casstore mount ({meta['date']}, {meta['host']})", "",
             "Same release, same run, one mount each.  warm = best of 3 "
             f"passes; lapsed = one pass {FOLLOW_TIMEOUT_S:g}+1 s later (the following mount's "
             "entry/attr timeouts have expired; the pinned mount's last a day).", "",
             "| workload | pinned warm | follow warm | ratio | pinned lapsed | follow lapsed "
             "| ratio |", "|---|---|---|---|---|---|---|"]
    for label in WORKLOADS:
        p, f = pin[label], fol[label]
        lines.append(f"| {label} | {p['warm']:,.0f} | {f['warm']:,.0f} | "
                     f"{f['warm'] / p['warm']:.2f}x | {p['lapsed']:,.0f} | {f['lapsed']:,.0f} | "
                     f"{f['lapsed'] / p['lapsed']:.2f}x |")
    units = ", ".join(f"{k}: {v['unit']}" for k, v in pin.items())
    lines.append(f"\nUnits: {units}.")
    (out / "fuse-follow.md").write_text("\n".join(lines) + "\n")
    print((out / "fuse-follow.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--no-cold", action="store_true", help="Warm figures only.")
    ap.add_argument("--follow", action="store_true",
                    help="Pinned vs following casstore mount (fuse-follow.md).")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    print("preparing data ...", flush=True)
    make_data(data)
    if args.follow:
        measure_follow(data, args.work)
        return
    targets = [Direct(data), Squash(data, args.work), Cas(data, args.work)]
    results = {}
    try:
        for t in targets:
            results[t.name] = measure(t, cold=not args.no_cold)
            t.close()
    finally:
        for t in targets:
            t.close()
    meta = {"date": time.strftime("%Y-%m-%d"), "host": f"{platform.node()} "
            f"{os.cpu_count()} CPUs, kernel {platform.release()}",
            "files": N_FILES, "big_mib": BIG_MIB, "warm_runs": WARM_RUNS}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "fuse.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "fuse.md").write_text(to_markdown(results, meta))
    print((out / "fuse.md").read_text())


if __name__ == "__main__":
    main()
