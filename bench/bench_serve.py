"""Object GET throughput: `cas serve` vs Debian's nginx serving the same store folder.

Side by side in one run, on loopback, 64 concurrent connections (keep-alive), each
GET naming a random object of the set:

* small objects: 4-64 KiB (the size of packs of small files);
* 1 MiB chunks.

The load generator is `wrk` (C, 2 threads, a Lua script cycling through the object
paths in a shuffled order).  Servers: `cas serve STORE` (one asyncio process,
sendfile) and nginx 1.22 (`sendfile on`, `access_log off`) with one worker, and
with `worker_processes auto` (2 here); `cas serve` with one process and with
`--workers 2`.  Rounds alternate between servers so that
load from other users of the machine hits all of them alike; the median round is
reported.  CPU seconds of the server processes and of wrk are read from /proc and
getrusage, to show whether the load generator or the machine was the limit.

Usage: .venv/bin/python bench/bench_serve.py [--seconds 8] [--rounds 3]
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

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
    location / {{ return 404; }}
  }}
}}
"""


def make_store(root: Path, sets: dict[str, tuple[int, int, int]]) -> dict[str, list[str]]:
    """Random (incompressible) chunk objects; returns URL paths per set."""
    store = Store.init(root)
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
    for p in [root, *root.rglob("*")]:  # nginx workers run as nobody
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return out


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
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    if not shutil.which("wrk") or not Path("/usr/sbin/nginx").exists():
        sys.exit("needs Debian's wrk and nginx-light (tools/setup installs them)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.chmod(tmp, 0o755)
    try:
        sets = {"small 4-64 KiB": (3000, 4 << 10, 64 << 10), "1 MiB": (300, 1 << 20, 1 << 20)}
        paths = make_store(tmp / "store", sets)
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
                                                       store=tmp / "store"))
            servers[f"nginx ({workers} worker{'s' if workers != '1' else ''})"] = Server(
                f"nginx {workers}", ["/usr/sbin/nginx", "-c", str(d / "nginx.conf"), "-p",
                                     str(d), "-e", str(d / "error.log")],
                f"http://127.0.0.1:{port}")
        for workers in (1, 2):
            label = "cas serve" + (f" ({workers} workers)" if workers > 1 else "")
            servers[label] = Server(label, [sys.executable, "-m", "casstore", "serve",
                                            str(tmp / "store"), "--listen", "127.0.0.1:0",
                                            "--workers", str(workers)])
        rounds: dict[str, dict[str, list[dict]]] = {s: {n: [] for n in servers} for s in sets}
        for _r in range(args.rounds):
            for sname, script in scripts.items():
                for name, srv in servers.items():
                    with srv:
                        measure(srv, script, 1, args.conns)  # warm up (page cache, conns)
                        res = measure(srv, script, args.seconds, args.conns)
                    rounds[sname][name].append(res)
                    print(f"{sname:16} {name:22} {res['rps']:9.0f} req/s {res['mb_s']:8.1f} MB/s"
                          f"  server {res['server_cores']:.2f} cores  wrk "
                          f"{res['wrk_cores']:.2f} cores  errors {res['errors']}"
                          f"/{res['status_errors']}", flush=True)
        report(rounds, args, sets)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _median(items: list[dict]) -> dict:
    return sorted(items, key=lambda r: r["rps"])[len(items) // 2]


def report(rounds: dict, args, sets) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {s: {n: _median(v) for n, v in per.items()} for s, per in rounds.items()}
    (RESULTS / "serve.json").write_text(json.dumps(
        {"args": vars(args), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
         "sets": {k: list(v) for k, v in sets.items()}, "rounds": rounds,
         "median": summary}, indent=1))
    lines = ["# Object GETs: `cas serve` vs nginx (same store folder, loopback)", "",
             f"`bench/bench_serve.py --seconds {args.seconds} --rounds {args.rounds}`: wrk, 2 "
             f"threads, {args.conns} keep-alive connections, random objects; median of "
             f"{args.rounds} alternating rounds.  Machine: {os.cpu_count()} cores, shared "
             f"(load average at the end {os.getloadavg()[0]:.1f}).", "",
             "| objects | server | req/s | MB/s | vs nginx (1 worker) | vs nginx (auto) | "
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
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
