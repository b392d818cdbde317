"""A node over an emulated WAN: mount + a real Julia start of the
example job, cold client cache with and without the release's prefetch list, against
the warm cache and against a local store folder, side by side in one run.

The example depot (examples/depot.toml, five packages, built and released as ``demo``
by bench_prefetch.prepare, which reuses the depot builder's sysimage cache) is served
by the real ``cas serve`` process; between it and the node sits the test harness's
LatencyProxy, 25 ms each way (this kernel has no netem).  A node is one whole
``cas exec demo -- julia --startup-file=no /depot/jobs/jetjob.jl EVENTS`` process
(mount, job, unmount) whose client config has ``source = <proxy URL>`` and its own
cache and state folders; the job's ``CHECKSUM`` line is checked every run.

Scenarios, interleaved each round:

* ``local folder, cold`` / ``warm``: the store folder as source (the baseline: a
  node with the store on local disk or NFS), empty client cache / the same node again;
* ``WAN cold, no prefetch``: empty client cache, ``--no-prefetch``;
* ``WAN cold, prefetch``: empty client cache, the signed prefetch list replayed;
* ``WAN warm``: the same node again (its cache filled by an earlier run).

If a build of the analysis depot (examples/analysis, 38 real packages) is cached in
/var/cache/casstore/bench/real (tools/quickstart-style, release ``julia-analysis``),
it is measured the same way, read-only, after the example depot.

Requests are counted at the origin (``cas serve``'s /metrics: every route but
/metrics itself), TCP connections at the latency proxy; each connection costs one
extra round trip (its handshake), each request at least one.

Run as root:  python bench/bench_wan.py [--work /tmp/bench-wan] [--rounds 5]
Writes bench/results/wan.json and bench/results/wan.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from bench_prefetch import JULIA, prepare  # noqa: E402
from net_fixtures import LatencyProxy  # noqa: E402

from serve_helpers import ProcessServer, raw  # noqa: E402

CAS = [sys.executable, "-m", "casstore"]
DELAY = 0.025
OBJ_ROUTE = "/objects/{xx}/{rest}"
REAL = Path("/var/cache/casstore/bench/real")  # tools/quickstart-style build, if present
SCENARIOS = ("local folder, cold", "local folder, warm", "WAN cold, no prefetch",
             "WAN cold, prefetch", "WAN warm")


@dataclass
class Depot:
    """A released depot to mount and the job to run from it."""

    label: str
    store: Path
    pub: Path
    release: str
    job: list[str]
    checksum: str
    prefetch: dict | None = None


def small_depot(work: Path) -> Depot:
    """The example depot, built (sysimages cached by input hash) and released as demo."""
    summary = prepare(work)
    return Depot("example depot (examples/depot.toml, 5 packages, jet job on 300 events)",
                 work / "store", work / "k.pub", "demo",
                 [JULIA, "--startup-file=no", "/depot/jobs/jetjob.jl", str(work / "events.txt")],
                 "CHECKSUM 65e16f18f73a1b88", summary.get("prefetch"))


def real_depot() -> Depot | None:
    """The analysis depot (38 registered packages) if a build of it is cached here."""
    store, pub = REAL / "store", REAL / "release.key.pub"
    if not (store / "releases" / "julia-analysis" / "_index.json").is_file() or not pub.is_file():
        return None
    return Depot("analysis depot (examples/analysis, 38 packages, the two-line job)",
                 store, pub, "julia-analysis",
                 [JULIA, "--startup-file=no", "/depot/jobs/analysis.jl"],
                 "CHECKSUM 8cde24e2b4853a0b")


def scrape(url: str) -> dict[tuple[str, str], float]:
    """One /metrics answer: (name, route) -> value summed over the other labels."""
    _s, _h, body = raw(url, "GET", "/metrics")
    out: dict[tuple[str, str], float] = {}
    for line in body.decode().splitlines():
        m = re.match(r"^([a-z_]+)(\{.*\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if m.group(1) == "cas_http_requests_total" and labels.get("method") == "GET" \
                and labels.get("route") == OBJ_ROUTE:
            out[("object_gets", "")] = out.get(("object_gets", ""), 0.0) + float(m.group(3))
        key = (m.group(1), labels.get("route", ""))
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


class Origin:
    """``cas serve`` over the store, the latency proxy in front, and their counters."""

    def __init__(self, store: Path, log: Path) -> None:
        self.server = ProcessServer(store, log)
        self.proxy: LatencyProxy | None = None

    def __enter__(self) -> Origin:
        self.server.__enter__()
        port = int(self.server.url.rsplit(":", 1)[1])
        self.proxy = LatencyProxy(port, DELAY).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.server.__exit__()

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def counters(self) -> dict[str, float]:
        """Requests and body bytes of every route but /metrics, object GETs, and the
        TCP connections the proxy has accepted."""
        m = scrape(self.server.url)
        assert self.proxy is not None

        def total(name: str) -> float:
            return sum(v for (n, route), v in m.items() if n == name and route != "/metrics")
        return {"requests": total("cas_http_requests_total"),
                "object_gets": m.get(("object_gets", ""), 0.0),
                "bytes": total("cas_http_response_body_bytes_total"),
                "connections": float(self.proxy.connections)}

    def settled(self) -> dict[str, float]:
        """The counters once they stop moving (a response is counted after it is sent)."""
        last = self.counters()
        for _ in range(40):
            time.sleep(0.25)
            now = self.counters()
            if now == last:
                return now
            last = now
        return last


def node_config(work: Path, depot: Depot, name: str, source: str) -> Path:
    cfg = work / f"{name}.toml"
    cfg.write_text(f'trusted_keys = ["{depot.pub}"]\nsource = "{source}"\nproxy = "DIRECT"\n'
                   f'cache_dir = "{work}/cache-{name}"\nstate_dir = "{work}/state-{name}"\n'
                   "read_timeout = 30\nrequest_timeout = 120\n")
    return cfg


def run_node(work: Path, depot: Depot, name: str, source: str, extra: list[str],
             fresh: bool) -> float:
    """One whole ``cas exec`` process; its wall time.  ``fresh``: empty cache + state."""
    if fresh:
        for d in (f"cache-{name}", f"state-{name}"):
            shutil.rmtree(work / d, ignore_errors=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JULIA_") and k.lower() not in ("http_proxy", "no_proxy")}
    scratch = work / f"scratch-{name}"
    scratch.mkdir(exist_ok=True)
    env["JULIA_DEPOT_PATH"] = f"{scratch}:/depot"
    cmd = [*CAS, "-q", "exec", depot.release, "--config",
           str(node_config(work, depot, name, source)), "--arch", "x86-64", *extra,
           "--", *depot.job]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    wall = time.monotonic() - t0
    if p.returncode != 0 or depot.checksum not in p.stdout:
        raise SystemExit(f"{name} failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-2000:]}")
    return wall


def git_commit() -> str:
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return p.stdout.strip() + ("+dirty" if dirty else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def measure(work: Path, depot: Depot, rounds: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    walls: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    counts: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
    load: list[list[float]] = []
    with Origin(depot.store, work / "serve.log") as origin:
        local = str(depot.store)
        plan = {"local folder, cold": (local, [], True),
                "local folder, warm": (local, [], False),
                "WAN cold, no prefetch": (origin.url, ["--no-prefetch"], True),
                "WAN cold, prefetch": (origin.url, [], True),
                "WAN warm": (origin.url, [], False)}
        for scen, (source, extra, fresh) in plan.items():  # fill the warm nodes once
            if not fresh:
                run_node(work, depot, slug(scen), source, extra, True)
        for r in range(rounds):
            load.append([round(x, 2) for x in os.getloadavg()])
            for scen, (source, extra, fresh) in plan.items():
                before = origin.settled()
                walls[scen].append(run_node(work, depot, slug(scen), source, extra, fresh))
                after = origin.settled()
                counts[scen].append({k: after[k] - before[k] for k in after})
                print(f"{depot.release} round {r + 1} {scen}: {walls[scen][-1]:.2f} s "
                      f"{counts[scen][-1]}", flush=True)
    return {"depot": depot.label, "release": depot.release, "prefetch": depot.prefetch,
            "rounds": rounds, "walls": walls, "counts": counts, "load": load}


def slug(scenario: str) -> str:
    return scenario.replace(", ", "-").replace(" ", "-").lower()


def table(res: dict) -> list[str]:
    """One depot's Markdown table: wall times and what went over the wire, per run."""
    walls, counts = res["walls"], res["counts"]
    med = {s: statistics.median(v) for s, v in walls.items()}
    lines = [f"## {res['depot']}: release `{res['release']}`, {res['rounds']} rounds", "",
             "| scenario | median s | min s | max s | vs WAN warm | same round vs WAN warm "
             "| requests | object GETs | MB from origin | TCP connections |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in SCENARIOS:
        v = walls[s]
        paired = statistics.median(x / w for x, w in zip(v, walls["WAN warm"], strict=True))
        c = {k: statistics.median(x[k] for x in counts[s]) for k in counts[s][0]}
        wire = (f"{c['requests']:.0f} | {c['object_gets']:.0f} | {c['bytes'] / 1e6:.1f} | "
                f"{c['connections']:.0f}") if s.startswith("WAN") else "- | - | - | -"
        lines.append(f"| {s} | {med[s]:.2f} | {min(v):.2f} | {max(v):.2f} | "
                     f"{med[s] / med['WAN warm']:.2f}x | {paired:.2f}x | {wire} |")
    loads = "; ".join(" ".join(f"{x:.1f}" for x in la) for la in res["load"])
    lines += ["", f"Load average at the start of each round: {loads}.  \"Same round\": the "
              "median over rounds of this run's time over the WAN warm run of its round "
              "(steadier than a ratio of medians when other jobs load the machine).", ""]
    return lines


def report(results: list[dict], old: dict | None = None) -> tuple[dict, str]:
    """The JSON document and the Markdown; ``old``: re-render a saved run as it was."""
    out = old or {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "commit": git_commit(),
        "delay_each_way_s": DELAY,
        "depots": [{**r, "median_s": {s: round(statistics.median(v), 3)
                                      for s, v in r["walls"].items()}} for r in results]}
    stamp = out["when"]
    lines = ["# A node over an emulated WAN: mount + real Julia start (`cas exec`, x86-64)",
             "",
             f"{stamp}, commit {out['commit']}, {out['cpus']} vCPUs ({out['cpu']}) shared with "
             f"other helpers' jobs.  `cas serve` (the real process) serves the store; the "
             f"node reaches it through a TCP proxy adding {DELAY * 1000:.0f} ms each way "
             f"(bench/bench_wan.py; this kernel has no netem).  Each run is one whole "
             "`cas exec RELEASE -- julia --startup-file=no JOB` process (mount, job, unmount) "
             "with its own client config; CHECKSUM checked every run.  Cold = an empty "
             "client cache and state folder; warm = the same node again.  "
             "Scenarios interleaved in each round.  Requests, object GETs and bytes are "
             "per run at the origin (/metrics, all routes but /metrics), TCP connections at "
             "the latency proxy (each costs one more round trip, its handshake).", ""]
    for r in results:
        lines += table(r)
    return out, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-wan"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--real-rounds", type=int, default=3,
                    help="rounds for the analysis depot, if its build is cached (0: skip)")
    ap.add_argument("--out", default=str(HERE / "results" / "wan"))
    ap.add_argument("--render", action="store_true",
                    help="only write <out>.md again from <out>.json (no measuring)")
    a = ap.parse_args()
    if a.render:
        old = json.loads(Path(a.out + ".json").read_text())
        Path(a.out + ".md").write_text(report(old["depots"], old)[1])
        return
    results = [measure(a.work / "small", small_depot(a.work / "small"), a.rounds)]
    real = real_depot() if a.real_rounds else None
    if real is not None:
        results.append(measure(a.work / "real", real, a.real_rounds))
    out, md = report(results)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1))
    Path(a.out + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
