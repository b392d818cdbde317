"""The cold-start benchmark's harness (bench/coldstart) runs end to end.

``python -m bench.coldstart --quick`` on the small example stack (the one
tests/test_julia_build.py builds; one variant, the sysimage from the shared build
cache), with real `cas serve`, the latency link, squid, `cas exec` mounts and
Julia: every scenario row must exist with its CHECKSUM checked on every run, no
precompilation or rejected cache from a mount, and numbers that hang together.
Its wall time is printed (no timed assertion: the machine is shared).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pkg_helpers import PACKAGES_TOML

from casstore.julia.namespace import namespaces_available

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {"writable-cold", "writable-warm", "mount-local", "mount-local-script",
             "mount-local-exec", "mount-http-cold", "mount-http-cold-noprefetch",
             "mount-http-warm", "mount-http-remount", "mount-local-plain"}
MOUNTING = {"mount-local-exec", "mount-http-cold", "mount-http-cold-noprefetch",
            "mount-http-remount"}  # each of their jobs starts a `cas exec` (the others reuse one)


def test_check_job_calls_a_precompiling_mount_run_invalid(tmp_path: Path) -> None:
    """A mount run that precompiles or rejects a cache is refused, not counted slow."""
    sys.path.insert(0, str(REPO))
    from bench.coldstart.nodes import check_job
    from bench.coldstart.stacks import SMALL, BenchError

    out, err = tmp_path / "o", tmp_path / "e"
    out.write_text(f"EVENTS 300\nCHECKSUM {SMALL.checksum}\n")
    step = {"rc": 0, "label": "job", "stdout_path": str(out), "stderr_path": str(err),
            "t0": 100.0, "t1": 103.0, "wall_s": 3.0, "cpu_s": 2.0,
            "times": [100.5, 101.0, 102.0, 102.5]}
    err.write_text("CASBENCH_TIMES 100.5 101.0 102.0 102.5\n")
    job = check_job(SMALL, "mount-local", step, True, tmp_path / "scratch")
    assert (job.startup_s, job.using_s, job.first_call_s, job.compute_s) == (0.5, 0.5, 1.0, 0.5)
    assert job.wall_s == 2.5  # the wrapper's second call is not the job's
    for line in ("[ Info: Precompiling CasJets [79a2eea6-21f7-4192-accd-677c30136c3e]",
                 "┌ Debug: Rejecting cache file /depot/compiled/v1.5/X/a.ji for X"):
        err.write_text(line + "\n")
        with pytest.raises(BenchError, match="INVALID RUN"):
            check_job(SMALL, "mount-local", step, True, tmp_path / "scratch")
        check_job(SMALL, "writable-cold", step, False, None)  # a writable node may
    out.write_text("CHECKSUM 0000000000000000\n")
    with pytest.raises(BenchError, match="CHECKSUM"):
        check_job(SMALL, "writable-cold", step, False, None)


@pytest.mark.julia
@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.skipif(not namespaces_available(), reason="needs root and unshare")
@pytest.mark.skipif(not PACKAGES_TOML.exists(), reason="shared bundles missing")
@pytest.mark.skipif(shutil.which("squid") is None and not Path("/usr/sbin/squid").exists(),
                    reason="squid not installed (tools/setup)")
def test_quick_benchmark_runs_and_checks_every_row(tmp_path: Path) -> None:
    out, work = tmp_path / "results" / "coldstart", tmp_path / "work"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bench.coldstart", "--quick", "--out", str(out),
                        "--work", str(work)], cwd=REPO, capture_output=True, text=True,
                       timeout=1800)
    wall = time.perf_counter() - t
    print(f"bench.coldstart --quick took {wall:.0f} s")
    shutil.rmtree(work, ignore_errors=True)  # the store and the nodes' caches: ~2 GB
    assert p.returncode == 0, p.stderr[-3000:]
    md, png = out.with_suffix(".md").read_text(), out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "--quick" in md and "REDUCED stack" in md and "## Headline" in md
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["meta"]["quick"] and r["meta"]["stack_key"] == "small"
    s = r["scenarios"]
    assert set(s) == SCENARIOS
    for name, x in s.items():
        assert x["n"] >= 1 and x["checksums_ok"] == x["n"], name
        assert 0 < x["job_wall_s"] <= x["wall_median_s"] < 600, name
        assert name == "mount-local-plain" or 0 < x["compute_s"] < x["job_wall_s"], name
        assert x["wall_min_s"] <= x["wall_median_s"] <= x["wall_max_s"], name
        assert x["cpu_median_s"] > 0 and x["e1_s"] > 0, name
        if name.startswith("mount"):
            assert x["precompiling"] == x["rejected"] == x["scratch_compiled"] == 0, name
            assert (x["mount_s"] > 0) == (name in MOUNTING) and x["unmount_s"] > 0, name
            assert x["cas_cpu_median_s"] > 0 or name not in MOUNTING, name
            assert f"| **{name}**" in md
    assert s["writable-cold"]["precompile_s"] > 0 and s["writable-cold"]["install_s"] > 0
    # a brand-new HTTP node fetches from the origin; the same node's second job and a
    # local mount fetch (almost) nothing; the prefetch list was replayed
    cold, warm = s["mount-http-cold"], s["mount-http-warm"]
    assert cold["origin_mb"] > 10 and cold["cache_files_before"] == 0
    assert warm["origin_mb"] < cold["origin_mb"] / 10 and warm["cache_files_before"] > 0
    assert s["mount-local"]["origin_mb"] == 0
    assert cold["prefetch_states"] == ["done"] and cold["prefetch_mb"] > 10
    assert s["mount-http-cold-noprefetch"]["prefetch_states"] == ["off"]
    (fleet,) = r["fleets"]
    assert fleet["k"] == 2 and fleet["checksums_ok"] == 2
    assert fleet["precompiling"] == fleet["rejected"] == 0
    assert fleet["squid"]["requests"] > 0 and fleet["origin_mb"] > 10
    assert {x["what"].split(":")[0] for x in r["ratios"]} >= {
        "writable-cold / mount-http-cold with prefetch", "fleet K=2"}
    assert all(x["value"] > 0 for x in r["ratios"])
