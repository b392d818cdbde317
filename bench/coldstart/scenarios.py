"""The cold-start scenarios, run in order against one site (origin + link + squid).

| scenario | node |
|---|---|
| writable-cold | empty writable depot, stock Julia: Pkg.instantiate (cas serve, link), |
|               | Pkg.precompile, job |
| writable-warm | the same depot, second job |
| mount-local | /depot mounted from the local store folder; jobs in that mount (warm |
|             | client cache and page cache) |
| mount-local-script | as mount-local, the analysis as a script in Main |
| mount-local-plain | as mount-local, the job run directly (no timing wrapper) |
| mount-local-exec | as mount-local, but each job its own `cas exec` (mount + job) |
| mount-http-cold | brand-new node (empty cache), origin over the 25 ms link, prefetch list |
| mount-http-warm | the same node, second job in the same mount |
| mount-http-remount | the same node later: a new `cas exec` (mount + job), warm client cache |
| mount-http-cold-noprefetch | a brand-new node without the prefetch list |
| fleet-K | K brand-new nodes at once, through one (cold) squid, to the origin over the link |
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.coldstart.nodes import LEAKED, MountNode, NodeRun, Site, WritableNode, run_fleet
from bench.coldstart.stacks import JULIA, Stack, make_events


@dataclass
class Fleet:
    k: int
    runs: list[NodeRun]
    span_s: float
    origin_bytes: float
    origin_requests: float
    squid: dict
    load: tuple[float, float, float]


@dataclass
class Results:
    samples: dict[str, list[NodeRun]] = field(default_factory=dict)
    fleets: list[Fleet] = field(default_factory=list)
    load: dict[str, tuple] = field(default_factory=dict)   # scenario -> loadavg at its end
    timings: dict[str, float] = field(default_factory=dict)
    leaked: list[dict] = field(default_factory=list)  # daemons that outlived the unmount
    execs: int = 0

    def add(self, run: NodeRun) -> None:
        self.samples.setdefault(run.scenario, []).append(run)


class Bench:
    def __init__(self, stack: Stack, work: Path, julia_prefix: Path, reps: int,
                 writable_reps: int, fleet_ks: list[int], log) -> None:
        self.stack, self.work, self.julia_prefix = stack, work, julia_prefix
        self.reps, self.writable_reps, self.fleet_ks = reps, writable_reps, fleet_ks
        self.log = log
        self.runs = work / "runs"
        shutil.rmtree(self.runs, ignore_errors=True)
        self.runs.mkdir(parents=True)
        self.res = Results()
        self.site: Site | None = None

    def phase(self, name: str, fn) -> None:
        t = time.perf_counter()
        self.log(f"[coldstart] {name} ...")
        fn()
        self.res.timings[name] = round(time.perf_counter() - t, 1)
        self.res.load[name] = tuple(round(x, 2) for x in os.getloadavg())
        self.log(f"[coldstart] {name}: {self.res.timings[name]} s, load {self.res.load[name]}")

    def run(self) -> Results:
        with Site(self.work) as site:
            self.site = site
            self.phase("setup", self.setup)
            self.phase("writable", self.writable)
            self.phase("mount-local", self.mount_local)
            self.phase("mount-http", self.mount_http)
            for k in self.fleet_ks:
                self.phase(f"fleet-{k}", lambda k=k: self.fleet(k))
        self.res.leaked = list(LEAKED)
        self.res.execs = sum(1 for _ in self.runs.glob("*/plan*.result.json"))
        for cache in self.runs.glob("*/cache"):  # GBs of node caches; plans and logs stay
            shutil.rmtree(cache, ignore_errors=True)
        return self.res

    # -- scenarios ---------------------------------------------------------------------
    def setup(self) -> None:
        """Events for the small stack; the origin's Pkg tarball cache warmed once (a
        site's server is long-running), by one untimed install."""
        node = MountNode(self, "setup", str(self.work / "store"))

        def gen(argv: list[str]) -> dict:
            node.exec([{"label": "gen", "argv": argv, "fresh_scratch": str(node.scratch),
                        "env": {"JULIA_DEPOT_PATH": f"{node.scratch}:/depot"}}], {})
            return {"rc": 0}

        make_events(self.stack, self.work, gen)
        WritableNode(self, "warm-origin")._pkg("install", "using Pkg; Pkg.instantiate()")

    def writable(self) -> None:
        for rep in range(self.writable_reps):
            node = WritableNode(self, f"writable-{rep}")
            self.res.add(node.job("writable-cold"))
            self.res.add(node.job("writable-warm"))
            last = self.res.samples
            self.log(f"  writable rep {rep + 1}: cold {last['writable-cold'][-1].wall_s:.1f} s,"
                     f" warm {last['writable-warm'][-1].wall_s:.2f} s")

    def mount_local(self) -> None:
        """One mount, a warm-up job, then the package and script jobs interleaved."""
        node = MountNode(self, "local", str(self.work / "store"))
        steps, names = [node.job("warm-up")], {}
        for rep in range(self.reps):
            steps += [node.job(f"pkg-{rep}"), node.job(f"script-{rep}", script=True),
                      node.plain(f"plain-{rep}")]
            names |= {f"pkg-{rep}": "mount-local", f"script-{rep}": "mount-local-script",
                      f"plain-{rep}": "mount-local-plain"}
        for run in node.exec(steps + [node.e1()], names):
            self.res.add(run)
        for _rep in range(self.reps):
            for run in node.exec([node.job("job"), node.e1()], {"job": "mount-local-exec"}):
                self.res.add(run)

    def mount_http(self) -> None:
        assert self.site is not None
        for rep in range(self.reps):
            node = MountNode(self, f"http-{rep}", self.site.url)
            for run in node.exec([node.job("cold"), node.job("warm"), node.e1()],
                                 {"cold": "mount-http-cold", "warm": "mount-http-warm"}):
                self.res.add(run)
            for run in node.exec([node.job("job"), node.e1()], {"job": "mount-http-remount"}):
                self.res.add(run)
            bare = MountNode(self, f"http-nopf-{rep}", self.site.url)
            for run in bare.exec([bare.job("job"), bare.e1()],
                                 {"job": "mount-http-cold-noprefetch"}, prefetch=False):
                self.res.add(run)
            last = self.res.samples
            self.log(f"  http rep {rep + 1}: cold {last['mount-http-cold'][-1].wall_s:.2f} s, "
                     f"warm {last['mount-http-warm'][-1].wall_s:.2f} s, remount "
                     f"{last['mount-http-remount'][-1].wall_s:.2f} s, no prefetch "
                     f"{last['mount-http-cold-noprefetch'][-1].wall_s:.2f} s")

    def fleet(self, k: int) -> None:
        assert self.site is not None
        squid = self.site.squid(f"k{k}")
        try:
            nodes = [MountNode(self, f"fleet{k}-{i}", self.site.url, squid.url)
                     for i in range(k)]
            b0, r0 = self.site.origin_counters()
            runs, span = run_fleet(nodes, f"fleet-{k}")
            b1, r1 = self.site.origin_counters()
            counts = squid_counts(squid)
        finally:
            squid.stop()
        f = Fleet(k, runs, span, b1 - b0, r1 - r0, counts,
                  tuple(round(x, 2) for x in os.getloadavg()))
        self.res.fleets.append(f)
        walls = sorted(r.wall_s for r in runs)
        self.log(f"  fleet K={k}: walls {walls[0]:.1f}-{walls[-1]:.1f} s, origin "
                 f"{f.origin_bytes / 1e6:.1f} MB, squid {counts}")


def squid_counts(squid, deadline: float = 10.0) -> dict:
    """Squid logs a request when it ends: read until two readings agree."""
    last, end = None, time.monotonic() + deadline
    while time.monotonic() < end:
        now = squid.access_counts()
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last or {}


__all__ = ["Bench", "Fleet", "JULIA", "Results"]
