"""Prefetch-list replay over an emulated WAN, whole processes: this checkout against a
baseline checkout, in one run, interleaved.

The store is bench_fuse.py's (a 172 MiB file of real shared libraries, ``big.so``,
and 20,000 small files); Debian's nginx serves it and the test harness's
LatencyProxy (25 ms each way) sits in front, both in this (parent) process.  The
prefetch list is what a start that reads ``--small`` small files and then
``big.so`` would record (so the sysimage is not first in access order).

Each round runs one child process per checkout (``PYTHONPATH`` picks the code, the
same Python and libraries for both) that builds a mount's pieces without FUSE
(``ObjectCache(HTTPSource)`` under ``KnownBad``, the FileCache, the VFS and the
mount's own ``warmer``), replays the list from cold caches and waits for every
whole-file copy.  It reports the wall time to the end of the replay, to the
complete copy of big.so and to both, its whole CPU time, how many objects were read
back out of the object cache (a second verify and decompress), and checks big.so's
bytes through the copy against the file's BLAKE3.  Beside them, the native floor:
verifying and decompressing every listed object once, in one thread, from the
local store.

Run after bench/bench_fuse.py (or bench_stat.py) has prepared --work:
    python bench/bench_replay.py --work /tmp/bench-fuse-work --baseline /path/to/checkout
Writes bench/results/replay.json and bench/results/replay.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DELAY = 0.025


# -- the child: one cold replay with the code on PYTHONPATH -----------------------------
def child(args: argparse.Namespace) -> None:
    import blake3

    from casstore.client.fuse.wiring import warmer
    from casstore.client.replay import Replay
    from casstore.format.objects import ObjectId
    from casstore.releases.prefetch import PrefetchList
    from casstore.sources import open_source
    from casstore.sources.http import HTTPSettings
    from casstore.sources.knownbad import KnownBad
    from casstore.view.filecache import FileCache
    from casstore.view.vfs import VFS

    tmp = Path(args.tmp)
    plist = PrefetchList.decode(Path(args.list).read_bytes())
    source = open_source([args.url], cache_dir=tmp / "objects", cache_bytes=2 << 30,
                         http=HTTPSettings())
    reread = [0, 0]  # objects, raw bytes: read back out of the object cache (a second decode)
    cached = source._cached  # the same ObjectCache in both checkouts

    def counted(oid, expect):
        got = cached(oid, expect)
        if got is not None:
            reread[0] += 1
            reread[1] += len(got[1])
        return got

    source._cached = counted
    bad = KnownBad(source)
    files = FileCache(bad, tmp / "files", 2 << 30, 4 << 20)
    vfs = VFS(bad, ObjectId.parse(args.root), cache=files)
    big = vfs.lookup("/big.so")
    done: dict[str, float] = {}
    t, c = time.perf_counter(), time.process_time()

    def watch() -> None:  # when big.so's copy is complete
        while big.entry.oid not in files.copies:
            time.sleep(0.002)
        copy = files.copies[big.entry.oid]
        with copy.cond:
            copy.cond.wait_for(lambda: copy.done)
        done["big"] = time.perf_counter() - t

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    replay = Replay(lambda: plist, source, warmer(vfs))
    replay.run()
    done["replay"] = time.perf_counter() - t
    for copy in list(files.copies.values()):
        if copy.thread is not None:
            copy.thread.join()
    watcher.join(timeout=60)
    if "big" not in done:
        raise SystemExit("big.so's copy was never seen complete")
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    summary = replay.summary()
    copy = files.copies[big.entry.oid]
    data = vfs.read(big, 0, big.entry.size)
    out = {"wall_s": wall, "cpu_s": cpu, "replay_s": done["replay"], "big_s": done.get("big"),
           "state": summary["state"], "errors": summary["errors"],
           "objects": summary["total"], "files_warmed": summary["files_warmed"],
           "complete": copy.complete, "reread": reread[0], "reread_mib": reread[1] / 2**20,
           "inner_fetches": source.stats.inner_fetches,
           "checksum_ok": blake3.blake3(data).hexdigest() == args.checksum}
    files.close()
    source.close()
    print(json.dumps(out))


# -- the parent ------------------------------------------------------------------------
def make_list(work: Path, small: int, out: Path) -> tuple[str, str, int]:
    """The prefetch list (``small`` small files read, then big.so); (root, big.so's
    BLAKE3, the native floor in ns: decode of every listed object in one thread)."""
    import blake3

    from casstore.format.objects import ObjectId, decode
    from casstore.releases.prefetch import DATA, build_list
    from casstore.releases.release import unverified
    from casstore.sources.local import LocalSource
    from casstore.view.reader import TreeReader
    from casstore.view.vfs import VFS

    raw = (work / "store" / "releases" / "bench" / "000000000001.release").read_bytes()
    root = ObjectId.parse(unverified(raw).root)
    local = LocalSource(work / "store")
    vfs = VFS(TreeReader(local), root)
    names = sorted(p.relative_to(work / "data").as_posix()
                   for p in (work / "data" / "small").rglob("*") if p.is_file())[:small]
    plist = build_list(vfs, [(n, DATA) for n in names] + [("big.so", DATA)])
    out.write_bytes(plist.encode())
    stored = [local.read_stored(o) for o in plist.oids()]
    t = time.perf_counter_ns()
    for oid, s in zip(plist.oids(), stored, strict=True):
        decode(oid, s)
    floor = time.perf_counter_ns() - t
    digest = blake3.blake3((work / "data" / "big.so").read_bytes()).hexdigest()
    return str(root), digest, floor


def run_child(code: Path, argv: list[str]) -> dict:
    """The child's report, with its whole process's wall and CPU (start-up, the
    replay, the check of big.so's bytes and exit)."""
    env = dict(os.environ, PYTHONPATH=str(code))
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *argv],
                       env=env, cwd="/", capture_output=True, text=True, timeout=600)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"child for {code} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    out["process_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="bench_fuse.py's work folder")
    ap.add_argument("--baseline", type=Path, help="checkout to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", type=int, default=400, help="small files read before big.so")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("list", "url", "root", "tmp", "checksum"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.work is None or args.baseline is None:
        ap.error("--work and --baseline are required")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from net_fixtures import LatencyProxy, Nginx

    work = args.work.resolve()
    lst = work / "replay-list.json"
    root, digest, floor_ns = make_list(work, args.small, lst)
    codes = {"baseline": args.baseline.resolve(), "casstore": ROOT}
    nginx = Nginx(work / "store", work / "rp-nginx").start()
    proxy = LatencyProxy(nginx.port, DELAY).start()
    runs: dict[str, list[dict]] = {n: [] for n in codes}
    tmp = work / "rp-tmp"
    try:
        for r in range(args.rounds):
            order = list(codes.items()) if r % 2 == 0 else list(codes.items())[::-1]
            for name, code in order:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(mode=0o700)
                res = run_child(code, ["--list", str(lst), "--url", f"{proxy.url}/store",
                                       "--root", root, "--tmp", str(tmp),
                                       "--checksum", digest])
                if not (res["checksum_ok"] and res["complete"] and res["errors"] == 0):
                    raise SystemExit(f"{name}: bad run {res}")
                runs[name].append(res)
                print(f"  round {r + 1}  {name:9s} {res['wall_s']:6.2f} s  big.so "
                      f"{res['big_s']:5.2f} s  {res['cpu_s']:5.2f} CPU-s  "
                      f"re-read {res['reread']} objects, {res['reread_mib']:.1f} MiB", flush=True)
    finally:
        proxy.stop()
        nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("wall_s", "big_s", "replay_s", "cpu_s", "reread", "reread_mib", "process_wall_s",
            "process_cpu_s")
    med = {n: {k: statistics.median(x[k] for x in v) for k in keys} for n, v in runs.items()}
    load = os.getloadavg()
    first = runs["casstore"][0]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
            "python": platform.python_version(), "baseline": str(args.baseline),
            "rounds": args.rounds, "small_files": args.small, "objects": first["objects"],
            "delay_each_way_s": DELAY, "native_floor_s": floor_ns / 1e9,
            "loadavg": [round(x, 2) for x in load]}
    out = HERE / "results"
    (out / "replay.json").write_text(json.dumps({"meta": meta, "median": med, "runs": runs},
                                                indent=1))
    b, c = med["baseline"], med["casstore"]
    lines = [f"# Prefetch-list replay over an emulated WAN ({meta['date']}, {meta['host']})",
             "",
             f"A list of {first['objects']} objects: {args.small} small files read, then "
             f"big.so (172 MiB); cold object and file caches, nginx behind a "
             f"{DELAY * 1000:.0f} ms-each-way latency proxy.  Whole child processes, "
             f"medians of {args.rounds} interleaved rounds; baseline = `{args.baseline}`, "
             f"same Python {meta['python']} and libraries.  Every run checked big.so's "
             f"BLAKE3 through the copy.  Load average at the end {load[0]:.1f} on "
             f"{os.cpu_count()} shared cores.", "",
             "| replay | all done | big.so copy done | replay loop | CPU over the replay "
             "| read back out of the object cache (verified and decompressed again) "
             "| whole child process: wall, CPU |",
             "|---|---|---|---|---|---|---|"]
    for n, m in (("baseline", b), ("casstore", c)):
        lines.append(f"| {n} | {m['wall_s']:.2f} s | {m['big_s']:.2f} s | "
                     f"{m['replay_s']:.2f} s | {m['cpu_s']:.2f} s | {m['reread']:.0f} objects, "
                     f"{m['reread_mib']:.1f} MiB | {m['process_wall_s']:.2f} s, "
                     f"{m['process_cpu_s']:.2f} s |")
    lines += ["", f"Ratios casstore / baseline: all done {c['wall_s'] / b['wall_s']:.2f}x, "
              f"big.so {c['big_s'] / b['big_s']:.2f}x, CPU {c['cpu_s'] / b['cpu_s']:.2f}x.",
              f"Native floor (verify + decompress every listed object once, one thread, "
              f"from local files): {floor_ns / 1e9:.2f} CPU-s."]
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    print((out / "replay.md").read_text())


if __name__ == "__main__":
    main()
