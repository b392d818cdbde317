"""``python -m bench.coldstart [--quick] [--out PREFIX] [--work DIR] ...``: see __init__."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from bench.coldstart import __doc__ as DOC
from bench.coldstart.stacks import ANALYSIS, ROOT, SMALL, BenchError, publish


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.coldstart", description=DOC.split("\n\n")[0],
                                 epilog=DOC.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="CI check: the small stack, 2 reps, 1 writable node, K = 2")
    ap.add_argument("-n", "--reps", type=int, help="repetitions per mount scenario "
                    "(default 5; --quick 2)")
    ap.add_argument("--writable-reps", type=int, help="writable nodes (default 3; --quick 1)")
    ap.add_argument("--fleet", help="fleet sizes, comma-separated (default 4,8,16; --quick 2)")
    ap.add_argument("--out", type=Path, help="results prefix (default "
                    "bench/results/coldstart; --quick: bench/results/coldstart-quick)")
    ap.add_argument("--render", action="store_true",
                    help="only write the results files again from the last run's "
                         "WORK/results.pickle (after a change to the report)")
    ap.add_argument("--work", type=Path, help="work folder (default "
                    "/var/cache/casstore/bench/coldstart, -quick for --quick)")
    a = ap.parse_args(argv)
    q = a.quick
    a.reps = a.reps or (2 if q else 5)
    a.writable_reps = a.writable_reps or (1 if q else 3)
    a.fleet_ks = [int(k) for k in (a.fleet or ("2" if q else "4,8,16")).split(",") if k]
    a.out = a.out or ROOT / "bench" / "results" / ("coldstart-quick" if q else "coldstart")
    a.work = (a.work or Path("/var/cache/casstore/bench") /
              ("coldstart-quick" if q else "coldstart")).resolve()
    if min([a.reps, a.writable_reps, *a.fleet_ks]) < 1:
        ap.error("repetitions and fleet sizes must be at least 1")
    return a


def git_commit() -> str:
    p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "casstore", "fuseclient", "server", "bench/coldstart"],
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.render:
        with open(a.work / "results.pickle", "rb") as f:
            res, meta = pickle.load(f)
        write(a, res, meta)
        return 0
    if os.geteuid() != 0:
        log("coldstart: error: needs root (cas exec mounts in private namespaces)")
        return 2
    from casstore.julia.install import ensure_julia

    t_start = time.perf_counter()
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    stack = SMALL if a.quick else ANALYSIS
    a.work.mkdir(parents=True, exist_ok=True)
    try:
        prefix = ensure_julia()
        summary = publish(stack, a.work, log)
        from bench.coldstart.host import host_info
        from bench.coldstart.scenarios import Bench
        from casstore.releases import variants

        bench = Bench(stack, a.work, prefix, a.reps, a.writable_reps, a.fleet_ks, log)
        res = bench.run()
    except BenchError as exc:
        log(f"coldstart: error: {exc}")
        return 1
    jv = subprocess.run([str(prefix / "bin" / "julia"), "--version"], capture_output=True,
                        text=True).stdout.strip().removeprefix("julia version ")
    meta = {**host_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "julia_version": jv, "git": git_commit(), "quick": a.quick,
            "stack": stack.title, "stack_key": stack.key, "release": stack.release,
            "checksum": stack.checksum,
            "variant": variants.choose(sorted(summary["variants"]), summary["baseline"]),
            "reps": a.reps, "writable_reps": a.writable_reps, "fleet_ks": a.fleet_ks,
            "load_before": load_before,
            "load_after": tuple(round(x, 2) for x in os.getloadavg()),
            "build": {"cache_hit": summary.get("cache_hit"),
                      "seconds": summary.get("timings", {}).get("total")},
            "bench_wall_s": time.perf_counter() - t_start}
    with open(a.work / "results.pickle", "wb") as f:
        pickle.dump((res, meta), f)
    write(a, res, meta)
    return 0


def write(a: argparse.Namespace, res, meta: dict) -> None:
    """The results: Markdown, JSON and the chart, at the --out prefix."""
    from bench.coldstart import report

    r = report.build(res, meta)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    report.chart(r, png)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    md = report.markdown(r, png.name)
    a.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
