"""Pkg server benchmark: `cas serve` (cold and warm tarball cache) vs a static file server.

Measured side by side in one run, on the 32 shared packages:

* building registry-General from the bundles (fresh store), and rebuilding it unchanged;
* fetching the registry and all 32 package tarballs once, sequentially (curl-like GETs):
  `cas serve` with an empty cache (every tarball made and hash-checked on first
  request), `cas serve` with a warm cache, and the baseline: Python's static
  `http.server` serving byte-identical copies of the same tarballs (no checks at all);
* real Julia 1.5.3 `Pkg.add("DataFrames")` on a fresh depot against each of the three.

Usage: .venv/bin/python bench/bench_pkgserver.py [--reps 3]
Writes bench/results/pkgserver.md and .json.
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pkg_helpers import BUNDLES, GENERAL_UUID, julia, packages  # noqa: E402
from test_pkgserver import ProcessServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def cas(store: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "casstore", "--store", str(store), *args],
                       capture_output=True, text=True, check=True)
    return p.stdout


def urls(tree_sha1: str) -> list[str]:
    out = ["/registries", f"/registry/{GENERAL_UUID}/{tree_sha1}"]
    out += [f"/package/{p['uuid']}/{p['tree_sha1']}" for p in packages().values()]
    return out


def fetch_all(base: str, paths: list[str], save: Path | None = None) -> tuple[float, int]:
    t0, total = time.perf_counter(), 0
    for path in paths:
        with urllib.request.urlopen(base + path, timeout=300) as r:
            data = r.read()
        total += len(data)
        if save is not None:
            dest = save / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return time.perf_counter() - t0, total


class StaticServer:
    """python -m http.server over a folder (the baseline), port 0, stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> StaticServer:
        code = ("import http.server,functools,sys;"
                "h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[1]);"
                "s=http.server.ThreadingHTTPServer(('127.0.0.1',0),h);"
                "print(s.server_address[1],flush=True);s.serve_forever()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.folder)],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.url = f"http://127.0.0.1:{self.proc.stdout.readline().strip()}"  # type: ignore
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def pkg_add(url: str, tmp: Path, tag: str) -> float:
    code = f'''using Pkg
    Pkg.Registry.add(RegistrySpec(uuid = Base.UUID("{GENERAL_UUID}")))
    Pkg.add("DataFrames")'''
    depot = tmp / f"depot-{tag}"
    t0 = time.perf_counter()
    proc = julia(code, depot, url)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"Pkg.add failed against {tag}: {proc.stderr[-2000:]}")
    shutil.rmtree(depot)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    res: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pkgsrv-") as t:
        tmp = Path(t)
        subprocess.run([sys.executable, "-m", "casstore", "keygen", str(tmp / "k")],
                       check=True, capture_output=True)
        for i in range(args.reps):
            store = tmp / f"s{i}"
            cas(store, "init")  # only cas init creates a store: not timed
            t0 = time.perf_counter()
            out = json.loads(cas(store, "--json", "registry", "build", str(BUNDLES),
                                 "--key", str(tmp / "k")))
            res.setdefault("registry build, 32 bundles, fresh store", []).append(
                time.perf_counter() - t0)
            t0 = time.perf_counter()
            cas(store, "registry", "build", str(BUNDLES), "--key", str(tmp / "k"))
            res.setdefault("registry build again, unchanged", []).append(
                time.perf_counter() - t0)
        store = tmp / "s0"
        paths = urls(out["tree_sha1"])
        static = tmp / "static"
        nbytes = 0
        for i in range(args.reps):
            cache = tmp / f"cache{i}"
            with ProcessServer(store, tmp / "k.pub", cache, tmp / "serve.log") as srv:
                dt, nbytes = fetch_all(srv.url, paths, static if i == 0 else None)
                res.setdefault("fetch all: cas serve, empty cache", []).append(dt)
                res.setdefault("fetch all: cas serve, warm cache", []).append(
                    fetch_all(srv.url, paths)[0])
            with StaticServer(static) as st:
                res.setdefault("fetch all: static http.server (baseline)", []).append(
                    fetch_all(st.url, paths)[0])
        for i in range(args.reps):
            cache = tmp / f"jcache{i}"
            with ProcessServer(store, tmp / "k.pub", cache, tmp / "serve.log") as srv:
                res.setdefault("Pkg.add DataFrames: cas serve, empty cache", []).append(
                    pkg_add(srv.url, tmp, f"cold{i}"))
                res.setdefault("Pkg.add DataFrames: cas serve, warm cache", []).append(
                    pkg_add(srv.url, tmp, f"warm{i}"))
            with StaticServer(static) as st:
                res.setdefault("Pkg.add DataFrames: static http.server (baseline)", []).append(
                    pkg_add(st.url, tmp, f"static{i}"))
    write(res, nbytes, len(paths), args.reps)


def write(res: dict[str, list[float]], nbytes: int, nreq: int, reps: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pkgserver.json").write_text(json.dumps(res, indent=1))
    load = os.getloadavg()
    lines = [f"# Pkg server benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "",
             f"2 vCPUs shared with other jobs (load {load[0]:.2f}); {reps} repetitions; "
             f"fetch all = {nreq} sequential GETs, {nbytes / 1e6:.1f} MB of tarballs; "
             "Pkg.add = a fresh Julia 1.5.3 process and depot, registry add + "
             "Pkg.add(\"DataFrames\") and its registered deps.  The baseline serves "
             "byte-identical files with no checks.", "",
             "| measurement | median s | min s | max s |", "|---|---|---|---|"]
    for k, v in res.items():
        lines.append(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    (RESULTS / "pkgserver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
