"""Julia cold start: a writable depot on the node vs the casstore mount, same run.

Builds the example depot (examples/depot.toml) with `cas depot build`, publishes it
as release "demo" into a temporary store under /var/tmp (warm artifact cache: a
few seconds; cold: ~100 s per CPU variant), then times the example job
(`jobs/jetjob.jl` on 300 events, which must print CHECKSUM 65e16f18f73a1b88):

  baseline   the node's own Julia (stock sysimage) with a fresh, empty writable
             depot: "install" = copy the package folders to dev/ and write
             Project/Manifest (as casstore.julia.environment does, no network),
             then `using` precompiles.  First run includes install + precompile +
             JIT + run; second run reuses the caches.
  mount/stock   /depot via `cas exec`, `-J .../sys-stock.so`, empty scratch depot
             first in JULIA_DEPOT_PATH (packages precompile into the scratch).
  mount/custom  /depot via `cas exec`, the variant's own sys.so: the one the host
             resolves, and forced --arch x86-64 / x86-64-v3; fresh scratch.
  also       `julia -e 1` startup, the mount itself (`cas exec demo -- true`),
             and end to end (`cas exec` + job, one process) with a warm and with
             an empty client cache.

Every repetition is a fresh Julia process (and each `cas exec` a fresh mount);
scenarios are interleaved within a repetition so load drifts hit all of them.
Julia wall time is taken inside the mount namespace by a small Python timer
(this script, internal `--inner` mode), so mount/unmount is not counted except
in the "mount" and "end to end" rows.  Extra runs with JULIA_DEBUG=loading check
that the custom images load with no precompilation and no rejected cache, and
that nothing is written to the scratch depot's compiled/.

Needs root (cas exec).  Usage:
  python bench/bench_julia.py [-n 5] [--spec examples/depot.toml]
                              [--out bench/results/julia] [--keep]
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.coldstart.host import host_info  # noqa: E402
from casstore.julia.abcheck import parse_loading_log  # noqa: E402
from casstore.julia.environment import check_package, write_environment  # noqa: E402
from casstore.julia.filetree import unpack_package  # noqa: E402
from casstore.julia.spec import load_spec  # noqa: E402

CHECKSUM = "65e16f18f73a1b88"
JULIA = "/depot/julia/bin/julia"
LIBJ = "/depot/julia/lib/x86_64-linux-gnu/julia"
STOCK_J = f"{LIBJ}/sys-stock.so"
CUSTOM_J = f"{LIBJ}/sys.so"
JOB = "/depot/jobs/jetjob.jl"
TIMEOUT = 1800


# -- inner mode: runs inside the mount namespace ------------------------------------
def scratch_compiled_files(depot: Path) -> int:
    c = depot / "compiled"
    return sum(1 for p in c.rglob("*") if p.is_file()) if c.exists() else 0


def timed_julia(step: dict) -> dict:
    """One fresh Julia process; wall time of that process only."""
    scratch = Path(step["scratch"])
    if step.get("fresh"):
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JULIA_") and k != "LD_LIBRARY_PATH"}
    env["JULIA_DEPOT_PATH"] = step["depot_path"]
    env["JULIA_HISTORY"] = "/dev/null"
    if step.get("debug"):
        env["JULIA_DEBUG"] = "loading"
    t = time.perf_counter()
    p = subprocess.run(step["argv"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - t
    rejected, precompiled = parse_loading_log(p.stderr)
    out = {"label": step["label"], "wall_s": wall, "rc": p.returncode,
           "checksum_ok": f"CHECKSUM {CHECKSUM}" in p.stdout,
           "rejected": len(rejected), "precompiling": len(precompiled),
           "scratch_compiled_files": scratch_compiled_files(scratch)}
    if p.returncode != 0 or step.get("debug"):
        out["stderr_tail"] = p.stderr[-1500:]
    if step.get("debug"):
        out["rejected_lines"], out["precompiling_lines"] = rejected[:5], precompiled[:5]
    return out


def inner(plan_file: Path) -> None:
    for step in json.loads(plan_file.read_text()):
        print("CASBENCH " + json.dumps(timed_julia(step)), flush=True)


# -- outer mode ----------------------------------------------------------------------
class Bench:
    def __init__(self, work: Path, spec_path: Path, reps: int) -> None:
        self.work, self.spec_path, self.reps = work, spec_path, reps
        self.spec = load_spec(spec_path)
        self.store, self.key = work / "store", work / "release.key"
        self.cfg = work / "client.toml"
        self.events = work / "events.txt"
        self.samples: dict[str, list[float]] = {}
        self.checks: dict[str, list[dict]] = {}
        self.failures: list[str] = []
        self.started: list[int] = []

    # processes
    def run(self, cmd: list[str], env: dict | None = None, timeout: float = TIMEOUT
            ) -> subprocess.CompletedProcess:
        """Run a command we own; on timeout SIGTERM it (cas exec then unmounts)."""
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, start_new_session=True)
        self.started.append(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            err += f"\n[bench] timed out after {timeout} s"
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    def cas(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "casstore", "--store", str(self.store), *args],
                        **kw)

    def exec_argv(self, arch: str | None, cfg: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "casstore", "--store", str(self.store), "exec", "demo",
                "--config", str(cfg or self.cfg), *(["--arch", arch] if arch else []), "--"]

    def record(self, label: str, wall: float) -> None:
        self.samples.setdefault(label, []).append(wall)

    def take(self, res: dict, job: bool = True) -> None:
        ok = res["rc"] == 0 and (res["checksum_ok"] or not job)
        if not ok:
            self.failures.append(f"{res['label']}: rc={res['rc']} {res.get('stderr_tail', '')}")
            return
        self.record(res["label"], res["wall_s"])
        self.checks.setdefault(res["label"], []).append(
            {k: res[k] for k in ("precompiling", "rejected", "scratch_compiled_files")})

    def inner_exec(self, arch: str | None, steps: list[dict], name: str) -> list[dict]:
        plan = self.work / f"plan-{name}.json"
        plan.write_text(json.dumps(steps))
        p = self.run(self.exec_argv(arch) + [sys.executable, str(Path(__file__).resolve()),
                                             "--inner", str(plan)])
        results = [json.loads(ln[9:]) for ln in p.stdout.splitlines()
                   if ln.startswith("CASBENCH ")]
        if p.returncode != 0 or len(results) != len(steps):
            self.failures.append(f"cas exec {name}: rc={p.returncode} {p.stderr[-1500:]}")
        return results

    # setup
    def build(self) -> dict:
        self.run([sys.executable, "-m", "casstore", "keygen", str(self.key)])
        t = time.perf_counter()
        p = self.cas("--json", "depot", "build", str(self.spec_path), "--out",
                     str(self.work / "build"), "--release", "demo", "--key", str(self.key))
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"depot build failed: {p.stderr[-3000:]}")
        self.cfg.write_text(f'trusted_keys = ["{self.key}.pub"]\n'
                            f'cache_dir = "{self.work}/cache"\nstate_dir = "{self.work}/state"\n')
        meta = json.loads((self.work / "build" / "meta.json").read_text())
        hits = {v: m.get("cache_hit") for v, m in meta.get("variants", {}).items()}
        gen = self.inner_exec(None, [{
            "label": "gen_events", "scratch": str(self.work / "s-gen"), "fresh": True,
            "depot_path": f"{self.work}/s-gen:/depot",
            "argv": [JULIA, "--startup-file=no", "/depot/jobs/gen_events.jl",
                     str(self.events), "300"]}], "gen")
        if not gen or gen[0]["rc"] != 0 or not self.events.is_file():
            raise SystemExit(f"gen_events failed: {gen} {self.failures}")
        return {"build_s": round(wall, 2), "overlay_cache_hit": hits,
                "summary": json.loads(p.stdout)}

    def install_baseline(self, depot: Path) -> None:
        """A node installing the packages from source into its own writable depot."""
        projects = {}
        for pkg in self.spec.packages:
            dst = depot / "dev" / pkg.name
            unpack_package(pkg.source, dst)
            projects[pkg.name] = check_package(pkg, dst)
        write_environment(self.spec, depot, projects,
                          self.spec.julia_prefix / self.spec.layout.stdlib)
        for dst, src in self.spec.files.items():
            if src.is_dir():
                shutil.copytree(src, depot / dst)
            else:
                shutil.copy2(src, depot / dst)

    # scenarios
    def baseline_rep(self) -> None:
        depot = self.work / "node-depot"
        shutil.rmtree(depot, ignore_errors=True)
        julia = str(self.spec.julia_prefix / "bin" / "julia")
        job = [julia, "--startup-file=no", str(depot / "jobs/jetjob.jl"), str(self.events)]
        t = time.perf_counter()
        depot.mkdir()
        self.install_baseline(depot)
        install = time.perf_counter() - t
        first = timed_julia({"label": "baseline first", "scratch": str(depot),
                             "depot_path": str(depot), "argv": job})
        first["wall_s"] += install
        self.take(first)
        self.take(timed_julia({"label": "baseline second", "scratch": str(depot),
                               "depot_path": str(depot), "argv": job}))
        self.take(timed_julia({"label": "julia -e 1, node stock", "scratch": str(depot),
                               "depot_path": str(depot),
                               "argv": [julia, "--startup-file=no", "-e", "1"]}), job=False)
        self.record("baseline install (copy + Project/Manifest)", install)

    def mount_steps(self, tag: str, stock: bool, rep: int, debug: bool = False,
                    argv: list[str] | None = None) -> list[dict]:
        """First run in a fresh mount with a fresh scratch depot, then a second run."""
        scratch = str(self.work / f"scratch-{tag.replace(' ', '_')}-{rep}")
        j = [JULIA, "--startup-file=no"] + (["-J", STOCK_J] if stock else [])
        argv = argv or j + [JOB, str(self.events)]
        base = {"scratch": scratch, "depot_path": f"{scratch}:/depot", "debug": debug,
                "argv": argv}
        return [base | {"label": f"{tag} first", "fresh": True},
                base | {"label": f"{tag} second"}]

    def mount_rep(self, rep: int, host_level: str) -> None:
        """One fresh `cas exec` mount per scenario: first run (fresh scratch), second run."""
        e1 = [JULIA, "--startup-file=no"]
        for tag, arch, steps in (
                ("stock", None, self.mount_steps("mount stock", True, rep)),
                ("resolved", None, self.mount_steps(
                    f"mount custom {host_level} (resolved)", False, rep)),
                ("x86-64", "x86-64", self.mount_steps(
                    "mount custom x86-64 (forced)", False, rep)),
                ("x86-64-v3", "x86-64-v3", self.mount_steps(
                    "mount custom x86-64-v3 (forced)", False, rep)),
                ("e1-stock", None, self.mount_steps(
                    "julia -e 1, mount stock", True, rep, argv=e1 + ["-J", STOCK_J, "-e", "1"])),
                ("e1-custom", None, self.mount_steps(
                    f"julia -e 1, mount custom {host_level}", False, rep, argv=e1 + ["-e", "1"]))):
            for res in self.inner_exec(arch, steps, f"{tag}-{rep}"):
                self.take(res, job="-e 1" not in res["label"])

    def outer_rep(self, rep: int) -> None:
        t = time.perf_counter()
        p = self.run(self.exec_argv(None) + ["true"])
        if p.returncode == 0:
            self.record("mount: cas exec demo -- true", time.perf_counter() - t)
        else:
            self.failures.append(f"cas exec true: {p.stderr[-800:]}")
        job = [JULIA, "--startup-file=no", JOB, str(self.events)]
        for label, cfg in (("end to end: cas exec + custom job, warm client cache", None),
                           ("end to end: cas exec + custom job, empty client cache",
                            self.fresh_cache_cfg(rep))):
            scratch = self.work / f"scratch-e2e-{rep}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
            env["JULIA_DEPOT_PATH"] = f"{scratch}:/depot"
            t = time.perf_counter()
            p = self.run(self.exec_argv(None, cfg) + job, env=env)
            wall = time.perf_counter() - t
            if p.returncode == 0 and f"CHECKSUM {CHECKSUM}" in p.stdout:
                self.record(label, wall)
            else:
                self.failures.append(f"{label}: rc={p.returncode} {p.stderr[-800:]}")

    def fresh_cache_cfg(self, rep: int) -> Path:
        cfg = self.work / f"client-cold-{rep}.toml"
        cache = self.work / f"cache-cold-{rep}"
        shutil.rmtree(cache, ignore_errors=True)
        cfg.write_text(f'trusted_keys = ["{self.key}.pub"]\ncache_dir = "{cache}"\n'
                       f'state_dir = "{self.work}/state"\n')
        return cfg

    def debug_checks(self, host_level: str) -> dict:
        """JULIA_DEBUG=loading, fresh scratch, per custom variant (plus stock for contrast)."""
        out = {}
        for arch, stock in ((None, False), ("x86-64", False), ("x86-64-v3", False), (None, True)):
            tag = f"debug {'stock' if stock else arch or host_level + ' (resolved)'}"
            res = self.inner_exec(arch, self.mount_steps(tag, stock, 0, debug=True)[:1],
                                  tag.replace(" ", "_"))
            if res:
                r = res[0]
                out[tag.removeprefix("debug ")] = {
                    "rc": r["rc"], "checksum_ok": r["checksum_ok"],
                    "precompiling": r["precompiling"], "rejected": r["rejected"],
                    "scratch_compiled_files": r["scratch_compiled_files"],
                    "clean": r["rc"] == 0 and r["checksum_ok"] and r["precompiling"] == 0
                    and r["rejected"] == 0 and r["scratch_compiled_files"] == 0,
                    "sample_lines": (r["precompiling_lines"] + r["rejected_lines"])[:3]}
        return out

    def leftovers(self) -> dict:
        """Mounts or processes of this run still around (should be none)."""
        mounts = [ln for ln in Path("/proc/mounts").read_text().splitlines()
                  if str(self.work) in ln or (" /depot " in ln and "fuse" in ln)]
        procs = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if str(self.store) in cmd:
                    procs.append((int(d.name), cmd[:200]))
        for pid, _ in procs:  # daemons of our own mounts only (our unique store path)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return {"mounts": mounts, "processes_terminated": procs}


def summarize(samples: dict[str, list[float]], ref: str) -> list[dict]:
    base = statistics.median(samples[ref]) if samples.get(ref) else None
    rows = []
    for label, xs in samples.items():
        med = statistics.median(xs)
        rows.append({"scenario": label, "n": len(xs), "median_s": round(med, 3),
                     "min_s": round(min(xs), 3), "max_s": round(max(xs), 3),
                     "speedup_vs_baseline_first": round(base / med, 2) if base else None,
                     "samples_s": [round(x, 3) for x in xs]})
    return rows


ORDER = ["baseline first", "baseline second", "mount stock first", "mount stock second",
         "mount custom", "end to end", "julia -e 1", "mount:", "baseline install"]


def sort_key(row: dict) -> tuple:
    s = row["scenario"]
    return (next((i for i, p in enumerate(ORDER) if s.startswith(p)), 99), s)


def report(r: dict) -> str:
    h = r["host"]
    lines = [f"# Julia cold start: writable node depot vs casstore mount ({r['date']})", "",
             f"Host: {h['cpu_model']} (archspec `{h['archspec']}`, levels "
             f"{', '.join(h['levels'])}), {h['cores']} cores; Julia {r['julia_version']}; "
             f"mount resolves variant `{r['resolved_variant']}`.  "
             f"{r['reps']} repetitions, each a fresh process; load average "
             f"{r['load_before']} before, {r['load_after']} after.  Job: "
             f"`jetjob.jl` on 300 events (CHECKSUM {CHECKSUM} checked on every run).", "",
             "| scenario | median s | min s | max s | speed-up vs baseline first run |",
             "|---|---|---|---|---|"]
    for row in r["results"]:
        sp = row["speedup_vs_baseline_first"]
        lines.append(f"| {row['scenario']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
                     f"{row['max_s']:.3f} | {f'{sp:.2f}x' if sp else '-'} |")
    lines += ["", "Notes:", "",
              "- *baseline*: the node's own Julia and stock sysimage, fresh writable depot "
              "every repetition; *first* includes the install (package copy + "
              "Project/Manifest) and precompilation, *second* reuses the caches.",
              "- *mount ...* rows are Julia's wall time inside `cas exec` (mount not "
              "counted); *first* = fresh scratch depot, *second* = same scratch again.",
              "- *end to end* = wall time of `cas exec demo -- julia job` (mount + job + "
              "unmount) from a fresh scratch; *empty client cache* also starts with an "
              "empty `cache_dir` (objects come from the local store; page cache warm).",
              f"- Build/publish into the temp store: {r['build']['build_s']} s "
              f"(overlay cache hits: {r['build']['overlay_cache_hit']}).", "",
              "## JULIA_DEBUG=loading check (fresh scratch depot, one run each)", "",
              "| image | precompiling lines | rejected caches | files in scratch compiled/ "
              "| clean (no precompile, no rejection, nothing written) |",
              "|---|---|---|---|---|"]
    for tag, c in r["loading_check"].items():
        note = " (expected for the stock image)" if tag == "stock" else ""
        lines.append(f"| {tag} | {c['precompiling']} | {c['rejected']} | "
                     f"{c['scratch_compiled_files']} | {'yes' if c['clean'] else 'no'}{note} |")
    lines.append("")
    if r["failures"]:
        lines += ["## Failures", ""] + [f"- {f[:300]}" for f in r["failures"]] + [""]
    lines.append(f"Leftover mounts after the run: {len(r['leftovers']['mounts'])}; "
                 f"leftover processes: {len(r['leftovers']['processes_terminated'])}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "depot.toml")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "julia")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (debugging)")
    ap.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.inner)
    if os.geteuid() != 0:
        raise SystemExit("needs root (cas exec mounts in a private namespace)")
    from casstore.julia.install import ensure_julia
    ensure_julia()
    work = Path(tempfile.mkdtemp(prefix="bench-julia-", dir="/var/tmp"))
    b = Bench(work, args.spec.resolve(), args.reps)
    load_before = os.getloadavg()
    try:
        host = host_info()
        build = b.build()
        from casstore.releases import variants
        resolved = variants.choose(sorted(build["summary"]["variants"]),
                                   build["summary"]["baseline"])
        for rep in range(args.reps):
            print(f"[bench] repetition {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
            b.baseline_rep()
            b.mount_rep(rep, resolved)
            b.outer_rep(rep)
        loading = b.debug_checks(resolved)
    finally:
        leftovers = b.leftovers()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    jv = subprocess.run([str(b.spec.julia_prefix / "bin/julia"), "--version"],
                        capture_output=True, text=True).stdout.strip()
    results = sorted(summarize(b.samples, "baseline first"), key=sort_key)
    r = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": host,
         "julia_version": jv.removeprefix("julia version "), "reps": args.reps,
         "resolved_variant": resolved, "load_before": [round(x, 2) for x in load_before],
         "load_after": [round(x, 2) for x in os.getloadavg()], "build": build,
         "results": results, "loading_check": loading, "failures": b.failures,
         "timed_run_checks": {k: {f: max(c[f] for c in v) for f in v[0]}
                              for k, v in b.checks.items()},
         "leftovers": leftovers, "git": subprocess.run(
             ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
             capture_output=True, text=True).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report(r))
    print(report(r))
    if b.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
