"""Servers and nodes of the cold-start benchmark.

* :class:`Site` - the origin (the real ``cas serve`` over the store: the store
  layout for HTTP mounts and the Pkg protocol for writable nodes), the emulated
  25 ms-each-way link in front of it (tests/net_fixtures.LatencyProxy; this kernel
  has no netem), and on demand a squid between nodes and the link
  (tests/net_fixtures.Squid).  All started here and always stopped, by PID.
* :class:`MountNode` - a node that mounts: its own client config, cache_dir,
  state_dir (status files in state_dir/mounts) and scratch depot first in
  JULIA_DEPOT_PATH, in front of /depot.  Every job is one ``cas exec`` (a private
  mount namespace, mounted and unmounted around the job) running inner.py.
* :class:`WritableNode` - what sites do today: an empty writable depot with the
  stock Julia, JULIA_PKG_SERVER at the origin (over the same link),
  ``Pkg.instantiate()`` of the Manifest, ``Pkg.precompile()``, then the job.

Every job run is checked (:func:`check_job`): the CHECKSUM, and for mounts no
precompilation, no rejected cache and nothing written to the scratch depot's
compiled/ (JULIA_DEBUG=loading).  A failed check raises BenchError: the run is
invalid, not slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.coldstart.inner import job_times, origin_counters, run_measured
from bench.coldstart.stacks import JULIA, ROOT, BenchError, Stack, script_job, stage_writable

sys.path.insert(0, str(ROOT / "tests"))
from net_fixtures import LatencyProxy, Squid  # noqa: E402

from casstore.julia.abcheck import parse_loading_log  # noqa: E402

from serve_helpers import ProcessServer  # noqa: E402

INNER = Path(__file__).resolve().parent / "inner.py"
JOB_JL = Path(__file__).resolve().parent / "job.jl"
LINK_DELAY_S = 0.025
TIMEOUT_S = 3600.0
GENERAL_UUID = "23338594-aafe-5451-b93e-139f81909106"


def clean_env() -> dict:
    """Our environment without Julia settings or proxies (a node sets its own)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("JULIA_") and k != "LD_LIBRARY_PATH"
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


class FleetSquid(Squid):
    """The site squid: tests/net_fixtures.Squid plus ``collapsed_forwarding on``, the
    setting a site sets for a fleet (concurrent misses of one URL become one origin
    request).  Only the config differs; start, stop and counting are Squid's."""

    def _conf(self) -> str:
        return super()._conf() + "collapsed_forwarding on\n"


class Site:
    """Origin ``cas serve`` + latency link (+ squid on demand), for one benchmark run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.dir = work / "site"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.origin: ProcessServer | None = None
        self.link: LatencyProxy | None = None

    def __enter__(self) -> Site:
        self.origin = ProcessServer(self.work / "store", self.dir / "serve.log",
                                    "--trusted-key", str(self.work / "release.key.pub"),
                                    "--cache", str(self.dir / "tarballs"))
        self.origin.__enter__()
        port = int(self.origin.url.rsplit(":", 1)[1])
        self.link = LatencyProxy(port, LINK_DELAY_S).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.link is not None:
            self.link.stop()
        if self.origin is not None:
            self.origin.__exit__()

    @property
    def url(self) -> str:
        """The origin as nodes see it: through the emulated link."""
        assert self.link is not None
        return self.link.url

    def origin_counters(self) -> tuple[float, float]:
        """(body bytes, requests) the origin has answered, less /metrics itself: the
        difference of two readings is what nodes fetched in between."""
        assert self.origin is not None
        got = origin_counters(self.origin.url)
        if got is None:
            raise BenchError(f"cannot read {self.origin.url}/metrics")
        return got[0], got[1]

    def squid(self, name: str) -> Squid:
        """A fresh (cold) squid in front of the link; the caller stops it."""
        return FleetSquid(self.dir / f"squid-{name}", cache_mb=2048, max_object_mb=256).start()


@dataclass
class JobRun:
    """One job (or `julia -e 1`) process, checked, and where its time went."""

    label: str
    wall_s: float            # the process, less the wrapper's extra second call
    cpu_s: float
    startup_s: float = 0.0   # process start -> first statement (runtime + sysimage load)
    using_s: float = 0.0
    first_call_s: float = 0.0
    compute_s: float = 0.0   # the second call, timed inside Julia
    exit_s: float = 0.0
    precompiling: int = 0
    rejected: int = 0
    scratch_compiled: int = 0


@dataclass
class NodeRun:
    """One node's job: the measured figures of one row sample."""

    scenario: str
    node: str
    wall_s: float                       # what the node waited for: mount + job + unmount
    cpu_s: float                        # processes of the node (children) + mount daemon
    job: JobRun
    mount_s: float = 0.0
    unmount_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # writable: install, precompile
    e1_s: float | None = None           # `julia -e 1` from the same node, afterwards
    prefetch: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    origin_bytes: float = 0.0
    origin_requests: float = 0.0
    cache_objects_before: int = 0
    cache_objects_after: int = 0
    checksum_ok: bool = False
    cas_cpu_s: float = 0.0              # of cpu_s: cas exec, cas mount and the mount daemon


LEAKED: list[dict] = []  # mount daemons still alive after their `cas exec` returned


def reap_daemon(pid: int, cfg: Path, grace_s: float = 3.0) -> bool:
    """End the mount daemon ``pid`` of the node whose config is ``cfg`` if it outlived
    its unmount (found so: an HTTP-source daemon whose FUSE loop has ended stays alive).
    Only a process whose command line names this node's own config is touched, and
    only by its PID.  Returns whether it had to be ended."""
    def ours() -> bool:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z" and str(cfg).encode() in cmd and b"mount" in cmd

    deadline = time.monotonic() + grace_s
    while ours():
        if time.monotonic() > deadline:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return True
                end = time.monotonic() + wait
                while ours() and time.monotonic() < end:
                    time.sleep(0.1)
                if not ours():
                    return True
            return True
        time.sleep(0.1)
    return False


def count_files(folder: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(folder)) if folder.exists() else 0


def check_job(stack: Stack, scenario: str, r: dict, mounted: bool, scratch: Path | None
              ) -> JobRun:
    """The checked job step of ``r`` (inner.py's step result), or BenchError."""
    out = Path(r["stdout_path"]).read_text(errors="replace")
    err = Path(r["stderr_path"]).read_text(errors="replace")
    where = f"{scenario} ({r['label']}, logs {r['stderr_path']})"
    if r["rc"] != 0 or r.get("timed_out"):
        tail = " | ".join(err.strip().splitlines()[-3:])[-400:]
        raise BenchError(f"{where}: exit {r['rc']}: {tail}")
    if f"CHECKSUM {stack.checksum}" not in out:
        raise BenchError(f"{where}: no CHECKSUM {stack.checksum} in the job's output")
    rejected, precompiled = parse_loading_log(err)
    compiled = count_files(scratch / "compiled") if scratch else 0
    if mounted and (rejected or precompiled or compiled):
        lines = (precompiled + rejected)[:2]
        raise BenchError(f"{where}: INVALID RUN from the mount: {len(precompiled)} "
                         f"precompiling, {len(rejected)} rejected caches, {compiled} files "
                         f"written to the scratch compiled/: {lines}")
    t = r.get("times")
    if r.get("plain"):  # the job run directly, without the timing wrapper
        return JobRun(r["label"], r["wall_s"], r["cpu_s"], precompiling=len(precompiled),
                      rejected=len(rejected), scratch_compiled=compiled)
    if not t:
        raise BenchError(f"{where}: job.jl printed no CASBENCH_TIMES")
    compute = t[3] - t[2]
    return JobRun(r["label"], r["wall_s"] - compute, r["cpu_s"], t[0] - r["t0"],
                  t[1] - t[0], t[2] - t[1], compute, r["t1"] - t[3],
                  len(precompiled), len(rejected), compiled)


def job_env(stack_using: str, script: str, again: str, depot_path: str,
            debug: bool) -> dict:
    env = {"JULIA_DEPOT_PATH": depot_path, "CASBENCH_USING": stack_using,
           "CASBENCH_SCRIPT": script, "CASBENCH_AGAIN": again, "JULIA_HISTORY": "/dev/null"}
    if debug:
        env["JULIA_DEBUG"] = "loading"
    return env


class MountNode:
    """A brand-new node (empty cache and state) that mounts the release.

    One :meth:`exec` is one ``cas exec``: the mount, then the plan's steps in it
    (jobs and `julia -e 1`, each a fresh process, each job with a fresh scratch
    depot and JULIA_DEBUG=loading), then the unmount.  Several jobs in one exec are
    a node whose /depot stays mounted (as ``cas mount`` on a real node)."""

    def __init__(self, bench, name: str, source: str, proxy: str | None = None) -> None:
        self.bench, self.name = bench, name
        self.dir = bench.runs / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.cache, self.state = self.dir / "cache", self.dir / "state"
        self.scratch = self.dir / "scratch"
        self.cfg = self.dir / "client.toml"
        lines = [f'trusted_keys = ["{bench.work / "release.key.pub"}"]',
                 f'source = "{source}"', f'cache_dir = "{self.cache}"',
                 f'state_dir = "{self.state}"']
        if proxy:
            lines.append(f'proxy = "{proxy}"')
        self.cfg.write_text("\n".join(lines) + "\n")
        self.runs = 0

    def job(self, label: str, script: bool = False) -> dict:
        """One job step: the stack's job (or its script form), fresh scratch, debug on."""
        stack = self.bench.stack
        using, path, again = (script_job(stack, self.bench.work) if script else
                              (stack.using, f"/depot/{stack.job}", stack.again))
        env = job_env(using, path, again, f"{self.scratch}:/depot", True)
        argv = [JULIA, "--startup-file=no", str(JOB_JL), *stack.job_args(self.bench.work)]
        return {"label": label, "argv": argv, "env": env, "fresh_scratch": str(self.scratch),
                "job": True}

    def plain(self, label: str) -> dict:
        """The job itself, no timing wrapper (`julia /depot/jobs/JOB`), debug on."""
        stack = self.bench.stack
        env = job_env("", "", "", f"{self.scratch}:/depot", True)
        argv = [JULIA, "--startup-file=no", f"/depot/{stack.job}",
                *stack.job_args(self.bench.work)]
        return {"label": label, "argv": argv, "env": env, "fresh_scratch": str(self.scratch),
                "plain": True}

    def e1(self) -> dict:
        return {"label": "julia -e 1", "argv": [JULIA, "--startup-file=no", "-e", "1"],
                "env": {"JULIA_DEPOT_PATH": f"{self.scratch}:/depot"}}

    def start(self, steps: list[dict], prefetch: bool = True) -> dict:
        """Write the plan; return the ticket :meth:`run_exec` and :meth:`finish` take."""
        self.runs += 1
        plan = self.dir / f"plan{self.runs}.json"
        site = self.bench.site
        plan.write_text(json.dumps({"steps": steps, "run_dir": str(self.state / "mounts"),
                                    "timeout": TIMEOUT_S, "cache_dir": str(self.cache),
                                    "metrics_url": site.origin.url if site else None}))
        argv = [sys.executable, "-m", "casstore", "-q", "exec", self.bench.stack.release,
                "--config", str(self.cfg), *([] if prefetch else ["--no-prefetch"]), "--",
                sys.executable, str(INNER), str(plan)]
        return {"plan": plan, "argv": argv, "before": count_files(self.cache),
                "origin_before": site.origin_counters() if site else (0.0, 0.0)}

    def run_exec(self, ticket: dict) -> dict:
        ticket["outer"] = run_measured(ticket["argv"], clean_env(), TIMEOUT_S + 120,
                                       str(ticket["plan"]) + ".exec.out",
                                       str(ticket["plan"]) + ".exec.err", cwd=str(self.dir))
        return ticket

    def finish(self, ticket: dict, scenarios: dict[str, str]) -> list[NodeRun]:
        """NodeRuns of the job steps whose label is in ``scenarios`` (label -> scenario).

        The first job of the exec is charged the mount (and the CPU of ``cas exec``,
        ``cas mount`` and the daemon); later jobs in the same mount only themselves."""
        outer = ticket["outer"]
        res_path = Path(str(ticket["plan"]).removesuffix(".json") + ".result.json")
        if outer["rc"] != 0 or not res_path.exists():
            raise BenchError(f"{self.name}: cas exec exit {outer['rc']} (logs "
                             f"{ticket['plan']}.exec.err): {outer['stderr'].strip()[-500:]}")
        res = json.loads(res_path.read_text())
        steps = res["steps"]
        daemon = res.get("daemon") or {}
        if daemon.get("pid") and reap_daemon(int(daemon["pid"]), self.cfg):
            LEAKED.append({"node": self.name, "pid": int(daemon["pid"]),
                           "source": "http" if "http" in str(daemon.get("source")) else
                           "local"})
        e1 = next((s["wall_s"] for s in steps if s["label"] == "julia -e 1" and s["rc"] == 0),
                  None)
        mount, unmount = res["t_start"] - outer["t0"], outer["t1"] - res["t_end"]
        overhead = outer["cpu_s"] - sum(s["cpu_s"] for s in steps) \
            + daemon.get("daemon_cpu_s", 0.0)
        runs, prev, files = [], ticket["origin_before"], ticket["before"]
        for i, st in enumerate(steps):
            counters = st.get("origin") or prev
            if st["label"] not in scenarios:
                prev, files = counters, st.get("cache_files", files)
                continue
            scen = scenarios[st["label"]]
            job = check_job(self.bench.stack, scen, st, True, self.scratch)
            first = i == 0
            run = NodeRun(scen, self.name, (mount if first else 0.0) + job.wall_s,
                          job.cpu_s + (overhead if first else 0.0), job,
                          mount if first else 0.0, unmount, e1_s=e1,
                          prefetch=(daemon.get("prefetch") or {}) if first else {},
                          cache=(daemon.get("cache") or {}) if first else {},
                          cache_objects_before=files,
                          cache_objects_after=st.get("cache_files", -1), checksum_ok=True)
            run.cas_cpu_s = overhead if first else 0.0
            run.origin_bytes = counters[0] - prev[0]
            run.origin_requests = counters[1] - prev[1]
            prev, files = counters, st.get("cache_files", files)
            runs.append(run)
        return runs

    def exec(self, steps: list[dict], scenarios: dict[str, str], prefetch: bool = True
             ) -> list[NodeRun]:
        return self.finish(self.run_exec(self.start(steps, prefetch)), scenarios)


def run_fleet(nodes: list[MountNode], scenario: str) -> tuple[list[NodeRun], float]:
    """Start every node's ``cas exec`` (one job) at once, one thread each waiting for
    its own process; returns the runs and the fleet's span (first start, last end)."""
    tickets = [n.start([n.job("job")]) for n in nodes]
    threads = [threading.Thread(target=n.run_exec, args=(t,))
               for n, t in zip(nodes, tickets, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    runs = [r for n, t in zip(nodes, tickets, strict=True)
            for r in n.finish(t, {"job": scenario})]
    span = max(t["outer"]["t1"] for t in tickets) - min(t["outer"]["t0"] for t in tickets)
    return runs, span


class WritableNode:
    """A node with an empty writable depot and the stock Julia (same runtime)."""

    def __init__(self, bench, name: str) -> None:
        self.bench, self.name = bench, name
        self.dir = bench.runs / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.env = stage_writable(bench.stack, bench.work, self.dir)
        self.julia = str(bench.julia_prefix / "bin" / "julia")
        self.n = 0

    def _run(self, label: str, argv: list[str], extra: dict) -> dict:
        self.n += 1
        env = clean_env()
        env.update({"JULIA_DEPOT_PATH": self.env["JULIA_DEPOT_PATH"],
                    "JULIA_PROJECT": self.env["JULIA_PROJECT"],
                    "JULIA_PKG_SERVER": self.bench.site.url, "JULIA_HISTORY": "/dev/null",
                    **extra})
        r = run_measured(argv, env, TIMEOUT_S, str(self.dir / f"{self.n}.out"),
                         str(self.dir / f"{self.n}.err"), cwd=str(self.dir))
        r["label"] = label
        r["stdout_path"], r["stderr_path"] = str(self.dir / f"{self.n}.out"), \
            str(self.dir / f"{self.n}.err")
        r["times"] = job_times(r["stderr"])
        return r

    def _pkg(self, label: str, code: str) -> dict:
        r = self._run(label, [self.julia, "--startup-file=no", "-e", code], {})
        if r["rc"] != 0:
            raise BenchError(f"writable node {self.name}: {label} failed ({r['rc']}): "
                             f"{r['stderr'].strip()[-500:]}")
        return r

    def job(self, scenario: str) -> NodeRun:
        site, stack = self.bench.site, self.bench.stack
        b0, r0 = site.origin_counters()
        phases, cpu = {}, 0.0
        if scenario == "writable-cold":
            for label, code in (("install", "using Pkg; Pkg.instantiate()"),
                                ("precompile", "using Pkg; Pkg.precompile()")):
                r = self._pkg(label, code)
                phases[label] = r["wall_s"]
                cpu += r["cpu_s"]
        env = job_env(stack.using, self.env["script"], stack.again,
                      self.env["JULIA_DEPOT_PATH"], False)
        r = self._run("job", [self.julia, "--startup-file=no", str(JOB_JL),
                              *stack.job_args(self.bench.work)], env)
        job = check_job(stack, scenario, r, False, None)
        e1 = self._run("julia -e 1", [self.julia, "--startup-file=no", "-e", "1"], {})
        run = NodeRun(scenario, self.name, sum(phases.values()) + job.wall_s, cpu + job.cpu_s,
                      job, phases=phases, e1_s=e1["wall_s"] if e1["rc"] == 0 else None,
                      checksum_ok=True)
        b1, r1 = site.origin_counters()
        run.origin_bytes, run.origin_requests = b1 - b0, r1 - r0
        return run
