"""GET throughput: `cas serve` vs Debian's nginx serving the same files.

Side by side in one run, on loopback, 64 concurrent connections (keep-alive), each
GET naming a random file of the set:

* small objects: 4-64 KiB (the size of packs of small files);
* 1 MiB chunks;
* Pkg tarballs: the 32 shared packages of registry-General.  `cas serve` answers
  `/package/{uuid}/{hash}` from its (warm) tarball cache; nginx serves byte-identical
  copies of the same tarballs at the same paths.

The load generator is `wrk` (C, 2 threads, a Lua script cycling through the paths in
a shuffled order).  Servers: nginx 1.22 (`sendfile on`, `access_log off`) with one
worker and with `worker_processes auto`; `cas serve` with `--workers 1` and with its
default (one worker per core, like nginx's `auto`).  Rounds alternate between
servers so that load from other users of the machine hits all of them alike; the
median round is reported, with the ratios of each round.  CPU seconds of the server
processes and of wrk are read from /proc and getrusage, to show whether the load
generator or the machine was the limit.

Cold tarballs: each round also starts `cas serve` on an empty tarball cache and GETs
every package once, one after the other (each tarball made from the store and its
git tree hash checked before it is sent); the first-request latency's p50 is
reported beside nginx's for the same, already made, files.

Usage: .venv/bin/python bench/bench_serve.py [--seconds 5] [--rounds 3]
Writes bench/results/serve.md and serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pkg_helpers import BUNDLES, packages  # noqa: E402

from casstore.format.layout import object_relpath  # noqa: E402
from casstore.format.objects import ObjType  # noqa: E402
from casstore.store.writable import Store  # noqa: E402

from helpers import terminate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLK = os.sysconf("SC_CLK_TCK")

LUA = r"""
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
function setup(thread) end
function init(args) i = math.random(#paths) end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("JSON {\"requests\": %%d, \"bytes\": %%d, \"duration_us\": %%d, " ..
    "\"errors\": %%d, \"status_errors\": %%d, \"p50_us\": %%d, \"p99_us\": %%d}\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""

NGINX = """
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    root {store};
    location /objects/ {{
      add_header Cache-Control "public, max-age=31536000, immutable";
    }}
    location /package/ {{
      root {tarballs};
      default_type application/gzip;
    }}
    location / {{ return 404; }}
  }}
}}
"""


def make_store(root: Path, sets: dict[str, tuple[int, int, int]]) -> dict[str, list[str]]:
    """Random (incompressible) chunk objects added to the store; URL paths per set."""
    store = Store.open(root)
    rnd = random.Random(7)
    out: dict[str, list[str]] = {}
    with store.lock():
        for name, (count, lo, hi) in sets.items():
            paths = []
            for _ in range(count):
                oid = store.put_raw(ObjType.CHUNK, rnd.randbytes(rnd.randint(lo, hi)))
                paths.append("/" + object_relpath(oid))
            rnd.shuffle(paths)
            out[name] = paths
    store.close()
    return out


def open_to_all(root: Path) -> None:
    for p in [root, *root.rglob("*")]:  # nginx workers run as nobody
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def make_registry(root: Path, key: Path) -> list[str]:
    """registry-General from the shared bundles; the package URL paths."""
    subprocess.run([sys.executable, "-m", "casstore", "keygen", str(key)], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "casstore", "--store", str(root), "registry",
                    "build", str(BUNDLES), "--key", str(key)], check=True, capture_output=True)
    return [f"/package/{p['uuid']}/{p['tree_sha1']}" for p in packages().values()]


def first_requests(url: str, paths: list[str], save: Path | None = None) -> list[float]:
    """Seconds for each path's GET (whole body), one after the other."""
    times = []
    for path in paths:
        t = time.perf_counter()
        with urllib.request.urlopen(url + path, timeout=600) as r:
            data = r.read()
        times.append(time.perf_counter() - t)
        if save is not None:
            dest = save / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK


def children_of(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Server:
    def __init__(self, name: str, args: list[str], url: str | None = None) -> None:
        self.name, self.args, self.fixed_url = name, args, url

    def __enter__(self) -> Server:
        self.url = self.fixed_url
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        if self.url is None:  # cas serve prints its address
            line = b""
            deadline = time.monotonic() + 60
            while b"listening on" not in line and time.monotonic() < deadline:
                if select.select([self.proc.stdout], [], [], 1.0)[0]:
                    line = self.proc.stdout.readline()  # type: ignore[union-attr]
            self.url = line.decode().split("listening on ")[1].strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                host, port = self.url.removeprefix("http://").split(":")
                socket.create_connection((host, int(port)), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid, *children_of(self.proc.pid)]

    def __exit__(self, *exc: object) -> None:
        terminate(self.proc)
        self.proc.stdout.close()  # type: ignore[union-attr]


def run_wrk(url: str, script: Path, seconds: int, conns: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                        "-s", str(script), url], capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("JSON "))
    res = json.loads(line[5:])
    res["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res


def measure(srv: Server, script: Path, seconds: int, conns: int) -> dict:
    pids = srv.pids()
    c0 = cpu_of(pids)
    res = run_wrk(srv.url, script, seconds, conns)  # type: ignore[arg-type]
    res["server_cpu_s"] = cpu_of(pids) - c0
    dur = res["duration_us"] / 1e6
    res["rps"] = res["requests"] / dur
    res["mb_s"] = res["bytes"] / dur / 1e6
    res["server_cores"] = res["server_cpu_s"] / dur
    res["wrk_cores"] = res["wrk_cpu_s"] / dur
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    if not shutil.which("wrk") or not Path("/usr/sbin/nginx").exists():
        sys.exit("needs Debian's wrk and nginx-light (tools/setup installs them)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.chmod(tmp, 0o755)
    try:
        run(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cas_serve(label: str, store: Path, key: Path, cache: Path, *extra: str) -> Server:
    return Server(label, [sys.executable, "-m", "casstore", "serve", str(store), "--listen",
                          "127.0.0.1:0", "--trusted-key", str(key), "--cache", str(cache),
                          *extra])


def run(tmp: Path, args) -> None:
    store, key = tmp / "store", tmp / "k"
    pkg_paths = make_registry(store, key)
    sets = {"small 4-64 KiB": (3000, 4 << 10, 64 << 10), "1 MiB": (300, 1 << 20, 1 << 20)}
    paths = make_store(store, sets)
    tarballs = tmp / "tarballs"
    cache = tmp / "cache"
    with cas_serve("warm", store, key.with_suffix(".pub"), cache) as srv:
        first_requests(srv.url, pkg_paths, save=tarballs)  # type: ignore[arg-type]
    rnd = random.Random(8)
    paths["Pkg tarballs"] = [rnd.choice(pkg_paths) for _ in range(500)]
    open_to_all(tmp)
    scripts = {}
    for i, (name, plist) in enumerate(paths.items()):
        (tmp / f"paths{i}.txt").write_text("\n".join(plist) + "\n")
        (tmp / f"s{i}.lua").write_text(LUA % (tmp / f"paths{i}.txt"))
        scripts[name] = tmp / f"s{i}.lua"
    servers = {}
    for workers in ("1", "auto"):
        d = tmp / f"nginx-{workers}"
        d.mkdir()
        port = free_port()
        (d / "nginx.conf").write_text(NGINX.format(workers=workers, dir=d, port=port,
                                                   store=store, tarballs=tarballs))
        servers[f"nginx ({workers} worker{'s' if workers != '1' else ''})"] = Server(
            f"nginx {workers}", ["/usr/sbin/nginx", "-c", str(d / "nginx.conf"), "-p",
                                 str(d), "-e", str(d / "error.log")],
            f"http://127.0.0.1:{port}")
    pub = key.with_suffix(".pub")
    servers["cas serve (1 worker)"] = cas_serve("cas 1", store, pub, cache, "--workers", "1")
    servers["cas serve (default workers)"] = cas_serve("cas", store, pub, cache)
    rounds: dict[str, dict[str, list[dict]]] = {s: {n: [] for n in servers} for s in scripts}
    cold: list[dict] = []
    for r in range(args.rounds):
        for sname, script in scripts.items():
            for name, srv in servers.items():
                with srv:
                    measure(srv, script, 1, args.conns)  # warm up (page cache, checks)
                    res = measure(srv, script, args.seconds, args.conns)
                rounds[sname][name].append(res)
                print(f"{sname:16} {name:28} {res['rps']:9.0f} req/s {res['mb_s']:8.1f} MB/s"
                      f"  server {res['server_cores']:.2f} cores  wrk "
                      f"{res['wrk_cores']:.2f} cores  errors {res['errors']}"
                      f"/{res['status_errors']}", flush=True)
        with cas_serve("cold", store, pub, tmp / f"cold{r}") as srv:
            cas_cold = first_requests(srv.url, pkg_paths)  # type: ignore[arg-type]
        with servers["nginx (1 worker)"] as srv:
            ngx = first_requests(srv.url, pkg_paths)  # type: ignore[arg-type]
        cold.append({"cas_p50_ms": statistics.median(cas_cold) * 1000,
                     "cas_max_ms": max(cas_cold) * 1000,
                     "nginx_p50_ms": statistics.median(ngx) * 1000})
        print(f"cold tarballs: cas serve p50 {cold[-1]['cas_p50_ms']:.0f} ms, nginx (files "
              f"already made) p50 {cold[-1]['nginx_p50_ms']:.1f} ms", flush=True)
    report(rounds, cold, args, {**{k: list(v) for k, v in sets.items()},
                                "Pkg tarballs": [len(pkg_paths)]})


def _median(items: list[dict]) -> dict:
    return sorted(items, key=lambda r: r["rps"])[len(items) // 2]


def _ratios(per: dict[str, list[dict]], name: str, base: str) -> list[float]:
    """The ratio of each round (the rounds interleave, so each pair shared the load)."""
    return [a["rps"] / b["rps"] for a, b in zip(per[name], per[base], strict=True)]


def report(rounds: dict, cold: list[dict], args, sets) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {s: {n: _median(v) for n, v in per.items()} for s, per in rounds.items()}
    ratios = {s: {"default vs nginx auto": _ratios(per, "cas serve (default workers)",
                                                  "nginx (auto workers)"),
                  "default vs nginx 1": _ratios(per, "cas serve (default workers)",
                                               "nginx (1 worker)"),
                  "1 worker vs nginx 1": _ratios(per, "cas serve (1 worker)",
                                                "nginx (1 worker)"),
                  "default vs 1 worker": _ratios(per, "cas serve (default workers)",
                                                "cas serve (1 worker)")}
              for s, per in rounds.items()}
    load = os.getloadavg()
    (RESULTS / "serve.json").write_text(json.dumps(
        {"args": vars(args), "cpus": os.cpu_count(), "loadavg_end": load,
         "sets": sets, "rounds": rounds, "median": summary, "ratios": ratios,
         "cold_tarballs": cold}, indent=1))
    lines = ["# GETs: `cas serve` vs nginx (same files, loopback)", "",
             f"`bench/bench_serve.py --seconds {args.seconds} --rounds {args.rounds}`: wrk, 2 "
             f"threads, {args.conns} keep-alive connections, random paths; median of "
             f"{args.rounds} interleaved rounds.  Machine: {os.cpu_count()} cores, shared "
             f"with other developers' jobs (load average at the end {load[0]:.1f} / "
             f"{load[1]:.1f} / {load[2]:.1f}).", "",
             "| files | server | req/s | MB/s | vs nginx (1 worker) | vs nginx (auto) | "
             "p50 / p99 ms | server cores | server CPU µs/req | wrk cores |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sname, per in summary.items():
        base1 = per["nginx (1 worker)"]["rps"]
        base2 = per["nginx (auto workers)"]["rps"]
        for name, r in per.items():
            lines.append(f"| {sname} | {name} | {r['rps']:.0f} | {r['mb_s']:.0f} | "
                         f"{r['rps'] / base1:.2f}x | {r['rps'] / base2:.2f}x | "
                         f"{r['p50_us'] / 1000:.1f} / {r['p99_us'] / 1000:.1f} | "
                         f"{r['server_cores']:.2f} | "
                         f"{r['server_cpu_s'] / max(r['requests'], 1) * 1e6:.0f} | "
                         f"{r['wrk_cores']:.2f} |")
    lines += ["", "Ratios per interleaved round (median first):", "",
              "| files | ratio | median | rounds |", "|---|---|---:|---|"]
    for sname, per in ratios.items():
        for what, vals in per.items():
            lines.append(f"| {sname} | {what} | {statistics.median(vals):.2f}x | "
                         f"{', '.join(f'{v:.2f}' for v in vals)} |")
    lines += ["", "Cold tarballs (empty cache; each package's first GET, sequential):", "",
              "| round | cas serve p50 ms | cas serve max ms | nginx p50 ms (file already made) |",
              "|---|---:|---:|---:|"]
    for i, c in enumerate(cold):
        lines.append(f"| {i + 1} | {c['cas_p50_ms']:.0f} | {c['cas_max_ms']:.0f} | "
                     f"{c['nginx_p50_ms']:.1f} |")
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
