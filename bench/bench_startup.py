"""Start-up cost of a node's short commands: ``cas exec REL -- true`` and ``cas mount``
+ ``cas umount``, whole processes, this checkout against a baseline checkout.

Both run with the same Python and libraries (``PYTHONPATH`` picks the checkout), on
a small release in a local store (trees and a 3 MB file: the release's size does
not enter a warm start-up), in interleaved rounds; medians.  Beside them the
interpreter's own floor (``python -c pass``) and the import of the CLI.  CPU is
that of the waited-for processes (``RUSAGE_CHILDREN``; a daemonised mount's loop
is not waited for by either side).  Each run waits until the mount daemon it
started has exited, and the two sides alternate which goes first.

Run as root (mounting, private namespaces):
    python bench/bench_startup.py --baseline /path/to/other/checkout [--rounds 15]
Writes bench/results/startup.json and bench/results/startup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_store(work: Path) -> Path:
    """A signed release 'small' (30 small files, one 3 MB file) and its client config."""
    config = work / "client.toml"
    if config.exists():
        return config
    sys.path.insert(0, str(ROOT))
    from casstore.releases.release import Release, keygen, load_secret, sign
    from casstore.store.snapshot import put_paths
    from casstore.store.writable import Store

    rnd = random.Random(7)
    src = work / "src"
    (src / "lib").mkdir(parents=True, exist_ok=True)
    for i in range(30):
        (src / "lib" / f"f{i}.jl").write_bytes(rnd.randbytes(rnd.randrange(10, 5000)))
    (src / "big.so").write_bytes(rnd.randbytes(3_000_000))
    store = Store.open(work / "store", create=True)
    root = put_paths(store, [src])
    keygen(work / "release.key")
    now = int(time.time())
    store.write_release("small", 1, sign(Release("small", 1, str(root), now,
                                                 now + 10 * 365 * 86400),
                                         load_secret(work / "release.key")))
    store.close()
    config.write_text('trusted_keys = ["release.key.pub"]\nsource = "store"\n'
                      'cache_dir = "cache"\nstate_dir = "state"\n')
    return config


def timed(argv: list[str], code: Path) -> tuple[float, float]:
    """(wall s, CPU s of the waited-for process tree) of one run; it must succeed."""
    env = dict(os.environ, PYTHONPATH=str(code))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    # cwd: not a checkout (``python -m`` puts the working directory first on sys.path)
    subprocess.run(argv, check=True, env=env, cwd="/", stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def daemons(mp: Path) -> list[int]:
    """Processes whose command line names ``mp`` (a mount daemon still exiting)."""
    key, out = str(mp).encode(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if key in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def wait_gone(mp: Path, timeout: float = 30.0) -> None:
    """Until the last run's daemon has exited: its exit must not overlap the next run."""
    deadline = time.monotonic() + timeout
    while daemons(mp) and time.monotonic() < deadline:
        time.sleep(0.02)


def scenarios(config: Path, mp: Path) -> dict[str, list[list[str]]]:
    py = [sys.executable]
    cas = [*py, "-m", "casstore"]
    return {
        "python -c pass": [[*py, "-c", "pass"]],
        "import casstore.cli.main": [[*py, "-c", "import casstore.cli.main"]],
        "cas exec small -- true": [[*cas, "-q", "exec", "--config", str(config),
                                    "--mountpoint", str(mp), "small", "--", "true"]],
        "cas mount + cas umount": [[*cas, "-q", "mount", "--config", str(config), "small",
                                    str(mp)],
                                   [*cas, "-q", "umount", "--config", str(config), str(mp)]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "startup")
    ap.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    config = make_store(args.work)
    mp = args.work / "mnt"
    mp.mkdir(exist_ok=True)
    codes = {"baseline": args.baseline.resolve(), "casstore": ROOT}
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in range(args.rounds):
        order = list(codes.items()) if r % 2 == 0 else list(codes.items())[::-1]
        for label, steps in scenarios(config, mp).items():
            for name, code in order:
                wall = cpu = 0.0
                for argv in steps:
                    w, c = timed(argv, code)
                    wall, cpu = wall + w, cpu + c
                wait_gone(mp)
                runs.setdefault(label, {}).setdefault(name, []).append((wall, cpu))
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    load = os.getloadavg()
    med = {label: {n: {"wall_s": statistics.median(w for w, _ in v),
                       "cpu_s": statistics.median(c for _, c in v)} for n, v in by.items()}
           for label, by in runs.items()}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.node()} {os.cpu_count()} CPUs, kernel {platform.release()}",
            "python": platform.python_version(), "baseline": str(args.baseline),
            "rounds": args.rounds, "loadavg": [round(x, 2) for x in load]}
    out = HERE / "results"
    (out / "startup.json").write_text(json.dumps({"meta": meta, "median": med, "runs": runs},
                                                 indent=1))
    lines = [f"# Start-up of short node commands ({meta['date']}, {meta['host']})", "",
             f"Whole processes, medians of {args.rounds} interleaved rounds; baseline = "
             f"`{args.baseline}`, same Python {meta['python']} and libraries.  Load average "
             f"at the end {load[0]:.1f} on {os.cpu_count()} shared cores (other developers' "
             "jobs): compare within a row.", "",
             "| command | baseline wall | casstore wall | ratio | baseline CPU | casstore CPU |",
             "|---|---|---|---|---|---|"]
    for label, by in med.items():
        b, c = by["baseline"], by["casstore"]
        lines.append(f"| `{label}` | {b['wall_s']:.3f} s | {c['wall_s']:.3f} s | "
                     f"{c['wall_s'] / b['wall_s']:.2f}x | {b['cpu_s']:.3f} s | "
                     f"{c['cpu_s']:.3f} s |")
    (out / "startup.md").write_text("\n".join(lines) + "\n")
    print((out / "startup.md").read_text())


if __name__ == "__main__":
    main()
