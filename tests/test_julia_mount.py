"""End to end: build the example depot, publish a signed release, mount it with real
FUSE at /depot (private namespace) and run real Julia from it, per CPU variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casstore.julia.abcheck import parse_loading_log
from casstore.julia.install import ensure_julia
from casstore.julia.namespace import namespaces_available

from helpers import cas

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "depot.toml"
JULIA = "/depot/julia/bin/julia"
SYSIMAGE = "/depot/julia/lib/x86_64-linux-gnu/julia/sys.so"
EXPECTED_CHECKSUM = "65e16f18f73a1b88"  # 300 events, seed 20261125 (examples/jobs)

pytestmark = [pytest.mark.julia, pytest.mark.fuse,
              pytest.mark.skipif(not namespaces_available(),
                                 reason="needs root and unshare(1) for private mounts")]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`cas depot build` into a fresh store, released as 'demo', plus a client config."""
    ensure_julia()
    base = tmp_path_factory.mktemp("e2e")
    key = base / "release.key"
    cas(None, "keygen", str(key), check=True)
    store = base / "store"
    res = cas(store, "--json", "depot", "build", str(SPEC), "--out", str(base / "build"),
              "--release", "demo", "--key", str(key), check=True, timeout=3600)
    summary = json.loads(res.out)
    cfg = base / "client.toml"
    cfg.write_text(f'trusted_keys = ["{key}.pub"]\ncache_dir = "{base}/cache"\n'
                   f'state_dir = "{base}/state"\n')
    (base / "scratch").mkdir()
    return {"store": store, "config": cfg, "base": base, "summary": summary}


def run_on_mount(pub: dict, arch: str | None, script: str) -> subprocess.CompletedProcess:
    """`cas exec` the release at /depot and run a shell script there."""
    cmd = [sys.executable, "-m", "casstore", "--store", str(pub["store"]), "exec", "demo",
           "--config", str(pub["config"]), *(["--arch", arch] if arch else []),
           "--", "sh", "-c", script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
    env["JULIA_DEPOT_PATH"] = f"{pub['base']}/scratch:/depot"
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def events(published: dict) -> Path:
    out = published["base"] / "events.txt"
    p = run_on_mount(published, None,
                     f"{JULIA} --startup-file=no /depot/jobs/gen_events.jl {out} 300")
    assert p.returncode == 0, p.stderr
    return out


def test_rebuild_of_same_spec_gives_same_ids(published: dict) -> None:
    """With the artifact cache, a second build is bit-identical: same tree ids."""
    res = cas(published["store"], "--json", "depot", "build", str(SPEC), "--out",
              str(published["base"] / "build2"), check=True, timeout=3600)
    again = json.loads(res.out)
    first = published["summary"]
    assert (again["root"], again["variants"]) == (first["root"], first["variants"])


def test_release_lists_both_variants(published: dict) -> None:
    assert set(published["summary"]["variants"]) == {"x86-64", "x86-64-v3"}
    show = json.loads(cas(published["store"], "--json", "release", "show", "demo",
                          "--trusted-key", f"{published['base']}/release.key.pub",
                          check=True).out)
    assert show["verified"] and show["baseline"] == "x86-64"
    assert show["meta"]["variant_targets"]["x86-64-v3"].startswith("haswell")


@pytest.mark.parametrize("arch", ["x86-64", "x86-64-v3"])
def test_julia_job_runs_from_mount_without_recompiling(published: dict, events: Path,
                                                       arch: str) -> None:
    script = (f"python3 -c \"import os;print('VARIANT', os.getxattr('{SYSIMAGE}', "
              f"'user.cas.variant').decode())\" && "
              f"JULIA_DEBUG=loading {JULIA} --startup-file=no /depot/jobs/jetjob.jl {events}")
    p = run_on_mount(published, arch, script)
    assert p.returncode == 0, p.stderr
    assert f"VARIANT {arch}" in p.stdout
    assert f"CHECKSUM {EXPECTED_CHECKSUM}" in p.stdout
    rejected, precompiled = parse_loading_log(p.stderr)
    assert rejected == [] and precompiled == [], p.stderr[-2000:]
    assert f"variant: {arch}, forced" in p.stderr or f"variant: {arch}" in p.stderr


def test_host_detection_picks_a_runnable_variant(published: dict, events: Path) -> None:
    p = run_on_mount(published, None,
                     f"{JULIA} --startup-file=no /depot/jobs/jetjob.jl {events}")
    assert p.returncode == 0, p.stderr
    assert f"CHECKSUM {EXPECTED_CHECKSUM}" in p.stdout
    assert "detected" in p.stderr


def test_resolver_matters_v3_image_refused_on_baseline_cpu(published: dict) -> None:
    """Forcing the v3 image onto a baseline CPU reproduces Julia's incompatibility error,
    while the baseline variant's image runs under the same CPU restriction."""
    probe = f"{JULIA} --startup-file=no --cpu-target=x86-64 -e 'println(1+1)'"
    bad = run_on_mount(published, "x86-64-v3", probe)
    assert bad.returncode != 0
    assert "Unable to find compatible target in system image" in bad.stderr
    good = run_on_mount(published, "x86-64", probe)
    assert good.returncode == 0 and good.stdout.strip().endswith("2"), good.stderr


def test_mount_writes_nothing_to_the_depot(published: dict, events: Path) -> None:
    p = run_on_mount(published, None, "touch /depot/x 2>&1; echo rc=$?")
    assert "Read-only file system" in p.stdout and "rc=1" in p.stdout


@pytest.mark.parametrize("arch", ["x86-64", "x86-64-v3"])
def test_abcheck_local_staging_equals_mounted_release(published: dict, arch: str) -> None:
    res = cas(published["store"], "--json", "depot", "abcheck", str(published["base"] / "build"),
              "demo", "--config", str(published["config"]), "--arch", arch, timeout=900)
    report = json.loads(res.out)
    assert res.code == 0 and report["identical"], report
    assert report["variant"] == arch
    assert report["job"] == ["/depot/jobs/jetjob.jl", "events.txt"]  # the spec's [job]
    assert report["local"]["checksum"] == EXPECTED_CHECKSUM
    assert report["local"]["methods"] > 1000 and report["local"]["digest"]


def test_abcheck_reports_a_difference(published: dict, tmp_path: Path) -> None:
    """A staging depot whose job differs from the release's is caught."""
    import shutil

    bad = tmp_path / "build"
    shutil.copytree(published["base"] / "build" / "root", bad / "root", symlinks=True)
    shutil.copytree(published["base"] / "build" / "variants", bad / "variants", symlinks=True)
    shutil.copy(published["base"] / "build" / "meta.json", bad / "meta.json")  # its [job]
    job = bad / "root" / "jobs" / "jetjob.jl"
    job.write_text(job.read_text().replace('println("CHECKSUM ', 'println("CHECKSUM 0'))
    res = cas(published["store"], "--json", "depot", "abcheck", str(bad), "demo",
              "--config", str(published["config"]), "--arch", "x86-64", timeout=900)
    report = json.loads(res.out)
    assert res.code == 1 and not report["identical"]
    assert any(d.startswith("checksum") for d in report["differences"])


def test_abcheck_runs_any_job_command_line(published: dict, tmp_path: Path) -> None:
    """Not the example's job and conventions: a script outside /depot, its own
    arguments, no event file; given after `--`, run from the caller's folder."""
    job = tmp_path / "vectors.jl"
    job.write_text(
        "using CasLorentz\n"
        "n = parse(Int, ARGS[1]); scale = parse(Float64, ARGS[2])\n"
        "v = sum(LorentzVector(10.0 * i, scale * i, 0.5 * i, 0.25 * i) for i in 1:n)\n"
        "println(\"mass \", mass(v))\n"
        "println(\"CHECKSUM \", string(hash((v.t, v.x, v.y, v.z)); base=16))\n")
    res = subprocess.run(
        [sys.executable, "-m", "casstore", "--store", str(published["store"]), "--json",
         "depot", "abcheck", str(published["base"] / "build"), "demo", "--config",
         str(published["config"]), "--arch", "x86-64", "--", "vectors.jl", "40", "1.5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["identical"], report
    assert report["job"] == ["vectors.jl", "40", "1.5"] and report["setup"] == []
    assert report["local"]["checksum"] == report["mounted"]["checksum"]
    assert report["local"]["checksum"] not in (None, EXPECTED_CHECKSUM)


@pytest.mark.parametrize("arch", ["x86-64", "x86-64-v3"])
def test_release_carries_prefetch_lists_recorded_from_a_real_start(published: dict,
                                                                    arch: str) -> None:
    """`cas depot build --release` recorded each variant's real Julia start from a mount
    and published the lists, signed, in the next revision (FORMAT §6.5)."""
    from casstore.releases.prefetch import load_list
    from casstore.releases.release import load_verified, parse_public
    from casstore.sources.local import LocalSource

    pf = published["summary"]["prefetch"]
    assert pf["recorded"] and pf["revision"] == published["summary"]["release"]["revision"] + 1
    src = LocalSource(published["store"])
    pub = parse_public(str(published["base"] / "release.key.pub"))
    rel = load_verified(src, "demo", [pub], None)
    assert rel.revision == pf["revision"] and set(rel.prefetch_ids()) == set(rel.variants)
    plist = load_list(src, rel, arch)
    paths = [p for p, _i in plist.files]
    sysimage = SYSIMAGE.removeprefix("/depot/")
    for must in ("julia/bin/julia", sysimage, "jobs/jetjob.jl"):
        assert must in paths, must
    # first-access order: the binary, then the image, then the script Julia runs
    assert paths.index("julia/bin/julia") < paths.index(sysimage) < paths.index("jobs/jetjob.jl")
    oids = plist.oids()
    overlay = rel.variant_ids()[arch]
    assert overlay in oids and rel.root_id == oids[0]  # trees of both layers
    image_objs = [oids[i] for i in dict(plist.files)[sysimage]]
    assert len(image_objs) > 3  # trees + blob manifest + its chunks
    assert plist.total_bytes() > 50 << 20  # the image is most of it


def test_mount_replays_the_list_before_julia_needs_it(published: dict, events: Path) -> None:
    """On a real mount the replay reaches its total (`cas status` inside the job's
    namespace) and the job still gives the same checksum."""
    poll = ("import json,subprocess,sys,time\n"
            "d=time.monotonic()+300\n"
            "while True:\n"
            f" s=json.loads(subprocess.run([sys.executable,'-m','casstore','--json','status',"
            f"'--config','{published['config']}','/depot'],capture_output=True,text=True).stdout)"
            "['prefetch']\n"
            " if s['state'] in ('done','failed','none') or time.monotonic()>d: break\n"
            " time.sleep(0.2)\n"
            "print('PREFETCH', json.dumps(s))\n")
    (published["base"] / "poll.py").write_text(poll)
    p = run_on_mount(published, "x86-64",
                     f"{JULIA} --startup-file=no /depot/jobs/jetjob.jl {events} && "
                     f"{sys.executable} {published['base']}/poll.py")
    assert p.returncode == 0, p.stderr
    assert f"CHECKSUM {EXPECTED_CHECKSUM}" in p.stdout
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("PREFETCH "))
    s = json.loads(line.removeprefix("PREFETCH "))
    assert s["state"] == "done" and s["done"] == s["total"] > 10 and s["errors"] == 0
    assert s["files_warmed"] >= 1  # the sysimage's whole-file copy
