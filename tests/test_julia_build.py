"""The example depot spec builds, its variants agree, and jobs load cleanly at /depot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from casstore.errors import SpecPathError, UnknownVariant
from casstore.julia import build_depot, compare, load_spec, run_job
from casstore.julia.filetree import link_tree, rel_files, tree_digest
from casstore.julia.install import ensure_julia
from casstore.julia.namespace import namespaces_available, run_bound

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "depot.toml"
EXPECTED_CHECKSUM = "65e16f18f73a1b88"  # 300 events, seed 20261125
SYSIMAGE = "julia/lib/x86_64-linux-gnu/julia/sys.so"
JULIA = "/depot/julia/bin/julia"

needs_ns = pytest.mark.skipif(not namespaces_available(),
                              reason="needs root and unshare for a private mount namespace")


def test_spec_parses_with_variants_and_baseline() -> None:
    spec = load_spec(SPEC)
    assert [v.name for v in spec.variants] == ["x86-64", "x86-64-v3"]
    assert spec.variants[1].cpu_target == "haswell,-rdrnd"
    assert spec.baseline == "x86-64"
    assert [p.name for p in spec.packages if not p.sysimage] == ["CasReport"]


def test_spec_rejects_unknown_variant_level(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    (tmp_path / "w.jl").write_text("1\n")
    bad.write_text('[files]\n"w.jl" = "w.jl"\n[workload]\nscript = "w.jl"\n'
                   '[[variants]]\nname = "pentium"\n')
    with pytest.raises(UnknownVariant):
        load_spec(bad)


def test_spec_rejects_escaping_paths(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text('[workload]\nscript = "../w.jl"\n[[variants]]\nname = "x86-64"\n')
    with pytest.raises(SpecPathError):
        load_spec(bad)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory):
    if not namespaces_available():
        pytest.skip("needs root and unshare")
    ensure_julia()  # fails (not skips) when Julia cannot be installed
    out = tmp_path_factory.mktemp("depot")
    return build_depot(SPEC, out, lambda m: print(m, flush=True))


def _view(built, level: str, dst: Path) -> Path:
    """root merged with the level's overlay, as the FUSE mount would show it."""
    link_tree(built.root, dst)
    link_tree(built.variants[level], dst)
    return dst


@pytest.fixture(scope="session")
def events(built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    view = _view(built, built.baseline, tmp_path_factory.mktemp("ev") / "view")
    out = tmp_path_factory.mktemp("events") / "events.txt"
    proc = run_bound(view, [JULIA, "--startup-file=no", "/depot/jobs/gen_events.jl",
                            str(out), "300"], {"JULIA_DEPOT_PATH": f"{out.parent}:/depot"},
                     readonly=True)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(view)
    return out


@pytest.mark.julia
@needs_ns
def test_overlays_hold_same_paths_and_root_holds_none(built) -> None:
    sets = {name: rel_files(p) for name, p in built.variants.items()}
    first = sets[built.baseline]
    assert SYSIMAGE in first
    assert any(p.startswith("compiled/v1.5/CasReport/") for p in first)
    assert all(s == first for s in sets.values())
    assert not (rel_files(built.root) & first)
    assert (built.root / "julia/lib/x86_64-linux-gnu/julia/sys-stock.so").is_file()
    assert set(built.meta["variants"]) == {"x86-64", "x86-64-v3"}


@pytest.mark.julia
@needs_ns
@pytest.mark.parametrize("level", ["x86-64", "x86-64-v3"])
def test_job_loads_cleanly_from_readonly_depot(built, events, level, tmp_path) -> None:
    view = _view(built, level, tmp_path / "view")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # --report loads CasReport, which is not in the image: from the depot's .ji
    res = run_job(JULIA, f"{scratch}:/depot", ["/depot/jobs/jetjob.jl", events, "--report"],
                  tree=view)
    assert res.returncode == 0, res.stderr
    assert res.checksum == EXPECTED_CHECKSUM
    assert "jet pt" in res.stdout
    assert res.rejected == [] and res.precompiled == []
    assert not (scratch / "compiled").exists()


@pytest.mark.julia
@needs_ns
def test_v3_image_refuses_baseline_cpu(built, tmp_path) -> None:
    view = _view(built, "x86-64-v3", tmp_path / "view")
    proc = run_bound(view, [JULIA, "--startup-file=no", "--cpu-target=x86-64", "-e", "1"],
                     {"JULIA_DEPOT_PATH": f"{tmp_path}:/depot"}, readonly=True)
    assert proc.returncode != 0
    assert "Unable to find compatible target in system image" in proc.stderr


@pytest.mark.julia
@needs_ns
def test_abcheck_same_depot_twice_agrees(built, events, tmp_path) -> None:
    view = _view(built, built.baseline, tmp_path / "view")
    runs = []
    for i in range(2):
        scratch = tmp_path / f"s{i}"
        scratch.mkdir()
        runs.append(run_job(JULIA, f"{scratch}:/depot", ["/depot/jobs/jetjob.jl", events],
                            tree=view, probe=True))
    assert runs[0].mi_count > 1000
    assert any(m.name == "CasJets" for m in runs[0].loaded_modules)
    assert compare(*runs) == []


@pytest.mark.julia
@needs_ns
def test_rebuild_is_identical_with_cache(built, tmp_path) -> None:
    again = build_depot(SPEC, tmp_path / "again", lambda m: None)
    assert all(v["cache_hit"] for v in again.meta["variants"].values())
    assert tree_digest(again.root, mtimes=True) == tree_digest(built.root, mtimes=True)
    for level, path in built.variants.items():
        assert tree_digest(again.variants[level], mtimes=True) == tree_digest(path, mtimes=True)
    st = [os.lstat(p / "dev/CasJets/src/CasJets.jl") for p in (built.root, again.root)]
    assert st[0].st_mtime_ns == st[1].st_mtime_ns == 1577836800 * 10**9


@pytest.mark.julia
@needs_ns
def test_clustering_matches_brute_force(built, tmp_path) -> None:
    view = _view(built, built.baseline, tmp_path / "view")
    script = REPO / "examples/test/check_clustering.jl"
    proc = run_bound(view, [JULIA, "--startup-file=no", str(script)],
                     {"JULIA_DEPOT_PATH": f"{tmp_path}:/depot"}, readonly=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CLUSTERING OK 75"


def test_default_jobs_bounded_by_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from casstore.julia import builder
    from casstore.julia.limits import SYSIMAGE_PEAK_BYTES

    monkeypatch.setattr(builder.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(builder, "_mem_available", lambda: 3 * SYSIMAGE_PEAK_BYTES - 1)
    assert builder.default_jobs() == 2  # memory for two, cores for four
    monkeypatch.setattr(builder, "_mem_available", lambda: 100 * SYSIMAGE_PEAK_BYTES)
    assert builder.default_jobs() == 4  # cores for four
    monkeypatch.setattr(builder, "_mem_available", lambda: 0)
    assert builder.default_jobs() == 1  # never fewer than one
    assert builder.default_jobs(3) == 3  # asked for: as asked


def test_variant_subset_and_unknown_variant_name() -> None:
    from casstore.julia.builder import choose_variants

    spec = load_spec(SPEC)
    assert [v.name for v in choose_variants(spec, ["x86-64-v3"])] == ["x86-64-v3"]
    assert [v.name for v in choose_variants(spec, None)] == ["x86-64", "x86-64-v3"]
    with pytest.raises(UnknownVariant, match="x86-64-v9"):
        choose_variants(spec, ["x86-64-v9"])


def test_concurrent_variant_work_raises_the_first_failure_in_spec_order() -> None:
    import threading

    from casstore.errors import BuildError
    from casstore.julia.builder import _each

    spec = load_spec(SPEC)
    started, both = [], threading.Barrier(2, timeout=30)

    def work(v):
        started.append(v.name)
        both.wait()  # both run at once, or this times out
        raise BuildError(f"{v.name} failed")

    with pytest.raises(BuildError, match="^x86-64 failed"):
        _each(spec.variants, 2, work)
    assert sorted(started) == ["x86-64", "x86-64-v3"]


def test_variant_log_names_the_variant_on_untagged_lines() -> None:
    from casstore.julia.builder import variant_log

    lines: list[str] = []
    log = variant_log(lines.append, "x86-64-v3")
    log("[sysimage x86-64-v3] start")
    log("casstore-sysimage: replayed 10 precompile statements, skipped 0")
    assert lines == ["[sysimage x86-64-v3] start",
                     "[x86-64-v3] casstore-sysimage: replayed 10 precompile statements, skipped 0"]


@pytest.mark.julia
@needs_ns
def test_parallel_build_has_the_serial_keys_tree_and_paths(built, tmp_path,
                                                           monkeypatch) -> None:
    """Both sysimages built at once from an empty cache: same input and variant keys,
    same common tree and overlay paths as the serial build, every line attributable."""
    monkeypatch.setenv("CAS_BUILD_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    par = build_depot(SPEC, tmp_path / "par", lines.append, jobs=2)
    assert par.meta["jobs"] == 2
    assert not any(v["cache_hit"] for v in par.meta["variants"].values())
    assert par.meta["input_key"] == built.meta["input_key"]
    for level, v in built.meta["variants"].items():
        assert par.meta["variants"][level]["key"] == v["key"]
        assert rel_files(par.variants[level]) == rel_files(built.variants[level])
    assert tree_digest(par.root, mtimes=True) == tree_digest(built.root, mtimes=True)
    starts = [i for i, ln in enumerate(lines) if ln.startswith("[sysimage ") and "start" in ln]
    first_done = min(i for i, ln in enumerate(lines)
                     if ln.startswith("[sysimage ") and "done in" in ln)
    assert len(starts) == 2 and max(starts) < first_done  # the two builds overlapped
    inner = [ln for ln in lines if "casstore-sysimage:" in ln]
    assert len(inner) == 4  # replayed + ran workload, per variant
    assert sorted(ln.split("]")[0] for ln in inner) == ["[x86-64", "[x86-64",
                                                        "[x86-64-v3", "[x86-64-v3"]
    shutil.rmtree(tmp_path / "cache")
