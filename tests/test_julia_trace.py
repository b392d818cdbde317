"""A depot builds even when Julia crashes under --trace-compile.

Julia 1.5.3 segfaults under `--trace-compile` on some workloads.  Here the workload
aborts only when tracing is on, a real crash of a real Julia.  The build must still
produce an image that runs the workload, keep the trace lines written before the
crash, and say so in the log, meta.json and the signed release's metadata; a cache
hit must still say so.  One variant, no packages: one sysimage build (~100 s).
"""

from __future__ import annotations

import json
import re

import pytest

from casstore.julia import build_depot
from casstore.julia.install import ensure_julia
from casstore.julia.namespace import namespaces_available

from helpers import cas

pytestmark = [pytest.mark.julia, pytest.mark.slow,
              pytest.mark.skipif(not namespaces_available(),
                                 reason="needs root and unshare(1) for private mounts")]

WORKLOAD = """\
f(x) = x + 1
g(v) = sum(f, v)
println(g([1, 2, 3]))
println(string(3.5, "x"))
# Julia's own bug, imitated: die only while --trace-compile is on.
Base.JLOptions().trace_compile != C_NULL && ccall(:abort, Cvoid, ())
println("workload done")
"""
SPEC = """\
[files]
jobs = "jobs"

[workload]
script = "jobs/crash-under-trace.jl"

[[variants]]
name = "x86-64"
"""


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`cas depot build --release` of the spec, with a build cache of its own so the
    trace really runs (and crashes) instead of coming from an earlier build."""
    ensure_julia()
    base = tmp_path_factory.mktemp("trace")
    (base / "jobs").mkdir()
    (base / "jobs" / "crash-under-trace.jl").write_text(WORKLOAD)
    (base / "depot.toml").write_text(SPEC)
    cas(None, "keygen", str(base / "k"), check=True)
    env = {"CAS_BUILD_CACHE": str(base / "cache")}
    res = cas(base / "store", "depot", "build", str(base / "depot.toml"),  # log on stderr
              "--out", str(base / "out"), "--release", "trc", "--key", str(base / "k"),
              env=env, check=True, timeout=3600)
    return {"base": base, "env": env, "res": res,
            "meta": json.loads((base / "out" / "meta.json").read_text())}


def test_build_survives_a_crashing_trace_and_says_so(crashed: dict) -> None:
    trace = crashed["meta"]["variants"]["x86-64"]["trace"]
    assert trace["ok"] is False and trace["returncode"] == -6  # SIGABRT
    assert "SIGABRT" in trace["note"]
    assert crashed["meta"]["trace_crashed"] == ["x86-64"]
    log = crashed["res"].err
    assert "[trace workload] trace run crashed (killed by SIGABRT)" in log
    # the validation stage ran the workload on the new image, without tracing
    assert crashed["meta"]["variants"]["x86-64"]["validated"] is True


def test_trace_lines_before_the_crash_are_kept_and_replayed(crashed: dict) -> None:
    kept = crashed["meta"]["variants"]["x86-64"]["trace"]["statements"]
    assert kept > 0
    m = re.search(r"casstore-sysimage: replayed (\d+) precompile statements, skipped (\d+)",
                  crashed["res"].err)
    assert m, crashed["res"].err[-2000:]
    assert int(m.group(1)) + int(m.group(2)) == kept
    assert int(m.group(1)) > 0
    assert "casstore-sysimage: ran workload" in crashed["res"].err


def test_release_metadata_records_the_crash(crashed: dict) -> None:
    base = crashed["base"]
    show = json.loads(cas(base / "store", "--json", "release", "show", "trc",
                          "--trusted-key", f"{base}/k.pub", check=True).out)
    assert show["verified"]
    assert "crashed" in show["meta"]["trace_crashed"]["x86-64"]


def test_cache_hit_still_reports_the_crash(crashed: dict, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CAS_BUILD_CACHE", crashed["env"]["CAS_BUILD_CACHE"])
    lines: list[str] = []
    again = build_depot(crashed["base"] / "depot.toml", tmp_path / "again", lines.append)
    v = again.meta["variants"]["x86-64"]
    assert v["cache_hit"] is True
    assert v["trace"] == crashed["meta"]["variants"]["x86-64"]["trace"]
    assert any("WARNING: trace run crashed" in ln for ln in lines)
