"""One directory of 1,000,000 entries: daemon memory and ``ls -f`` time, before vs after.

A 1M-entry tree (about 30 MB) raised the mount daemon from
19 MB to 581 MB RSS and ``ls -f`` took 60 s.  This builds such a tree from
objects directly (empty inline files), publishes it as a signed release, and
mounts it with each code tree given (``--baseline DIR`` is a checkout of the
old code, e.g. ``git worktree add /tmp/base main``; the current tree is always
measured), as whole processes: ``cas mount --foreground`` then ``ls -f``.

Run as root:  python bench/bench_bigdir.py --baseline /tmp/base
Writes bench/results/bigdir.json and bench/results/bigdir.md.
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
sys.path.insert(0, str(ROOT))

N = 1_000_000


def build(work: Path, n: int) -> None:
    """A store with release 'bigdir': root/big/ holds ``n`` empty files."""
    from casstore.format.objects import ObjType
    from casstore.format.trees import Entry, Kind, Storage, encode_tree
    from casstore.releases.release import Release, keygen, load_secret, sign
    from casstore.store.writable import Store

    if (work / ".complete").exists():
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = Store.open(work / "store", create=True)
    big = encode_tree(Entry(f"f{i:07d}.jl".encode(), Kind.FILE, 0o644, 0, 0, Storage.INLINE)
                      for i in range(n))
    big_id = store.put_raw(ObjType.TREE, big)
    root_id = store.put_raw(ObjType.TREE, encode_tree(
        [Entry(b"big", Kind.DIR, 0o755, 0, 0, None, big_id)]))
    keygen(work / "release.key")
    now = int(time.time())
    rel = Release("bigdir", 1, str(root_id), now - 10, now + 365 * 86400, {}, None)
    store.write_release("bigdir", 1, sign(rel, load_secret(work / "release.key")))
    store.close()
    (work / "tree_bytes").write_text(str(len(big)))
    (work / ".complete").touch()


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0])
    return out


def mounted(mp: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mp) for line in f)


def measure(code: Path, work: Path, label: str) -> dict:
    run = work / f"run-{label.replace(' ', '-')}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    cfg = run / "client.toml"
    cfg.write_text(f'trusted_keys = ["{work}/release.key.pub"]\nsource = "{work}/store"\n'
                   f'cache_dir = "{run}/cache"\nstate_dir = "{run}/state"\n')
    mp = run / "mnt"
    mp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.Popen([sys.executable, "-m", "casstore", "mount", "--foreground",
                             "--config", str(cfg), "bigdir", str(mp)], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(run / "log", "w"))
    try:
        deadline = time.monotonic() + 60
        while not mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{label}: mount failed: {(run / 'log').read_text()}")
            time.sleep(0.05)
        before = rss_kb(proc.pid)
        t0 = time.perf_counter()
        ls = subprocess.run(["ls", "-f", str(mp / "big")], capture_output=True, timeout=900)
        ls_s = time.perf_counter() - t0
        count = ls.stdout.count(b"\n") - 2  # . and ..
        t0 = time.perf_counter()
        st = subprocess.run(["stat", "-c", "%s", str(mp / "big" / f"f{N // 2:07d}.jl")],
                            capture_output=True, text=True)
        stat_ms = (time.perf_counter() - t0) * 1000
        after = rss_kb(proc.pid)
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"label": label, "code": str(code), "entries_listed": count,
            "rss_mounted_mb": before["VmRSS"] / 1024, "rss_after_ls_mb": after["VmRSS"] / 1024,
            "peak_rss_mb": after["VmHWM"] / 1024, "ls_f_s": ls_s, "stat_one_ms": stat_ms,
            "stat_ok": st.returncode == 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "bigdir")
    ap.add_argument("--baseline", type=Path, help="A checkout of the code to compare with.")
    ap.add_argument("-n", type=int, default=N)
    args = ap.parse_args()
    build(args.work, args.n)
    rows = []
    if args.baseline:
        rows.append(measure(args.baseline.resolve(), args.work, "baseline"))
    rows.append(measure(ROOT, args.work, "this tree"))
    tree_mb = int((args.work / "tree_bytes").read_text()) / 1e6
    for r in rows:
        print(json.dumps(r))
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "bigdir.json").write_text(json.dumps({"entries": args.n, "tree_mb": tree_mb,
                                                 "rows": rows}, indent=1))
    lines = [f"# One directory of {args.n:,} entries ({time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPUs, kernel {platform.release()})", "",
             f"Tree object: {tree_mb:.1f} MB raw.  Whole processes: `cas mount --foreground`, "
             "then `ls -f` of the directory and one `stat` in it.", "",
             "| code | RSS mounted | RSS after ls -f | peak RSS | ls -f | entries | stat one |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rss_mounted_mb']:.0f} MB | "
                     f"{r['rss_after_ls_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | "
                     f"{r['ls_f_s']:.1f} s | {r['entries_listed']:,} | "
                     f"{r['stat_one_ms']:.0f} ms |")
    (res / "bigdir.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
