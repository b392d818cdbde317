"""The two stacks the benchmark runs, and how each is published and staged on a node.

* ``analysis`` (the full run): examples/analysis, the user's own Project/Manifest
  over the 32 real registered packages of ../shared/julia-packages plus the six
  site packages, its two-line job (CHECKSUM 8cde24e2b4853a0b).  Published exactly as
  tools/quickstart does it: ``cas registry build`` of the bundles, ``cas depot
  build`` with both CPU variants (sysimages cached by input hash in
  /var/cache/casstore/build: seconds when warm, ~29 min when not).
* ``small`` (``--quick``): examples/depot.toml, the five packages written here that
  the test suite builds anyway (tests/test_julia_build.py), with only its baseline
  variant ``x86-64`` (the same input key as the suite's, so the two share one cached
  image; a fresh machine builds just that one image).  Its job is a script
  (jetjob.jl on 300 events, CHECKSUM 65e16f18f73a1b88).  The registry of the same
  bundles is still built, because a writable node's ``Pkg.instantiate`` installs
  the registry from ``cas serve`` whatever its Manifest holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "julia-packages"
JULIA = "/depot/julia/bin/julia"


class BenchError(Exception):
    """The benchmark cannot go on (a failed build, an invalid run): one clear line."""


@dataclass(frozen=True)
class Stack:
    key: str
    title: str
    spec: Path
    release: str
    checksum: str
    using: str          # packages the job loads (CASBENCH_USING)
    job: str            # depot-relative job script
    again: str          # the second call (CASBENCH_AGAIN): the compute alone
    script_note: str    # what mount-local-script runs

    def job_args(self, work: Path) -> list[str]:
        return [str(work / "events.txt")] if self.key == "small" else []


ANALYSIS = Stack(
    "analysis", "the real-packages analysis stack (examples/analysis: 18 registered "
    "packages, 32 with dependencies, plus 6 site packages; custom sysimage per CPU level)",
    ROOT / "examples" / "analysis" / "depot.toml", "julia-analysis", "8cde24e2b4853a0b",
    "CasAnalysis", "jobs/analysis.jl", "CasAnalysis.main(ARGS)",
    "`include` of CasAnalysis.jl into `Main` (its own functions compiled in every "
    "process), then `CasAnalysis.main(ARGS)`")
SMALL = Stack(
    "small", "the small example stack (examples/depot.toml: 5 packages written here, "
    "only the x86-64 variant) - a REDUCED stack for --quick, not the headline",
    ROOT / "examples" / "depot.toml", "demo", "65e16f18f73a1b88",
    "CasLorentz, CasJets, CasHist, CasEvents", "jobs/jetjob.jl", "main(ARGS)",
    "the same job: on this stack the job already is a script in `Main`")


def cas(store: Path, *args: str, timeout: float = 7200, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "casstore", "--store", str(store), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def quick_spec(work: Path) -> Path:
    """examples/depot.toml with only its x86-64 variant and absolute source paths."""
    text = SMALL.spec.read_text()
    cut = text.index('[[variants]]\nname = "x86-64-v3"')
    rest = text[cut:]
    text = text[:cut] + rest[rest.index("[build]"):]
    base = SMALL.spec.parent
    text = text.replace('path = "packages/', f'path = "{base}/packages/')
    text = text.replace('jobs = "jobs"', f'jobs = "{base}/jobs"')
    out = work / "depot-quick.toml"
    out.write_text(text)
    return out


def publish(stack: Stack, work: Path, log) -> dict:
    """Registry + depot release in ``work/store`` (reused when unchanged), with its
    prefetch lists; returns the build summary."""
    store, key = work / "store", work / "release.key"
    if not key.exists():
        p = subprocess.run([sys.executable, "-m", "casstore", "keygen", str(key)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError(f"keygen failed: {p.stderr.strip()}")
    if not (SHARED / "bundles").is_dir():
        raise BenchError(f"no package bundles at {SHARED}/bundles")
    cas(store, "init")  # the only command that creates a store (a no-op if it exists)
    p = cas(store, "registry", "build", str(SHARED / "bundles"), "--key", str(key),
            "--repo-urls", str(SHARED / "packages.toml"))
    if p.returncode != 0:
        raise BenchError(f"cas registry build failed: {p.stderr.strip()[-500:]}")
    spec = quick_spec(work) if stack.key == "small" else stack.spec
    log(f"building {stack.release} from {spec} (sysimages cached by input hash)")
    p = cas(store, "--json", "depot", "build", str(spec), "--out", str(work / "build"),
            "--release", stack.release, "--key", str(key))
    if p.returncode != 0:
        raise BenchError(f"cas depot build failed: {p.stderr.strip()[-1500:]}")
    summary = json.loads(p.stdout)
    pf = summary.get("prefetch") or {}
    for attempt in range(3):  # recording is best effort in cas depot build: insist here
        if pf.get("recorded") or pf.get("note") == "lists present":
            break
        log(f"prefetch lists not recorded ({pf.get('note')}); recording again ({attempt + 1})")
        pf = record_lists(stack, work, log)
    else:
        raise BenchError(f"could not record the prefetch lists: {pf.get('note')}")
    summary["prefetch"] = pf
    meta = json.loads((work / "build" / "meta.json").read_text())
    summary["cache_hit"] = {v: m.get("cache_hit") for v, m in meta["variants"].items()}
    return summary


def record_lists(stack: Stack, work: Path, log) -> dict:
    from casstore.julia.record import record_release
    from casstore.store.writable import Store

    st = Store.open(work / "store")
    try:
        return record_release(st, work / "store", stack.release, work / "release.key",
                              work / "build", 365.0, log)
    finally:
        close = getattr(st, "close", None)
        if close:
            close()


def make_events(stack: Stack, work: Path, run_mounted) -> None:
    """The small stack's job reads an event file: generate it once from the mount."""
    if stack.key != "small" or (work / "events.txt").is_file():
        return
    res = run_mounted([JULIA, "--startup-file=no", "/depot/jobs/gen_events.jl",
                       str(work / "events.txt"), "300"])
    if res["rc"] != 0 or not (work / "events.txt").is_file():
        raise BenchError(f"gen_events.jl failed (rc {res['rc']})")


def script_job(stack: Stack, work: Path) -> tuple[str, str, str]:
    """(CASBENCH_USING, script, again) for mount-local-script."""
    if stack.key == "small":
        return stack.using, f"/depot/{stack.job}", stack.again
    path = work / "jobs" / "analysis_script.jl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# The analysis as a script: its code defined in Main, then run.\n"
                    'include("/depot/dev/CasAnalysis/src/CasAnalysis.jl")\n'
                    "CasAnalysis.main(ARGS)\n")
    return "", str(path), stack.again


def stage_writable(stack: Stack, work: Path, node: Path) -> dict:
    """A writable node: its project (and the site's own packages next to it) and an
    empty depot.  Returns JULIA_DEPOT_PATH, JULIA_PROJECT and the job script."""
    depot = node / "depot"
    depot.mkdir(parents=True)
    if stack.key == "analysis":
        src = stack.spec.parent
        (node / "project").mkdir()
        for f in ("Project.toml", "Manifest.toml"):
            shutil.copy2(src / f, node / "project" / f)
        shutil.copytree(ROOT / "examples" / "packages", node / "packages")  # ../packages
        shutil.copytree(src / "jobs", node / "jobs")
        project = node / "project"
    else:  # the depot's own environment and dev/ packages, as bench_julia.py's node
        root = work / "build" / "root"
        shutil.copytree(root / "dev", depot / "dev")
        shutil.copytree(root / "environments", depot / "environments")
        shutil.copytree(root / "jobs", node / "jobs")
        project = depot / "environments" / "v1.5"
    return {"JULIA_DEPOT_PATH": str(depot), "JULIA_PROJECT": str(project),
            "script": str(node / stack.job)}
