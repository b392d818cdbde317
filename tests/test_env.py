"""``cas env``: the job environment, eval'd by real shells, then used by real Julia."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_julia_mount

from casstore.client.jobenv import default_scratch, ensure_scratch, job_env, project_for, render
from casstore.errors import UnsafeFolder, UsageError
from casstore.julia.abcheck import parse_loading_log

from helpers import assert_one_line_error, cas

published = test_julia_mount.published  # the example depot the Julia tests build
CAS = f"{sys.executable} -m casstore"
NASTY = "sp ace'q\"d$(touch PWNED)`touch PWNED2`;x!y*"


def eval_in(shell: str, text: str, cwd: Path, names: list[str]) -> dict[str, str]:
    """What ``eval "$text"`` sets in ``shell``, read back with printenv."""
    script = 'eval "$1"; ' + "; ".join(f'printenv {n} || echo "<unset>"' for n in names)
    p = subprocess.run([shell, "-c", script, shell, text], capture_output=True, text=True,
                       cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}, timeout=30)
    assert p.returncode == 0, p.stderr
    return dict(zip(names, p.stdout.splitlines(), strict=True))


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_eval_is_safe_with_any_path(tmp_path: Path, shell: str) -> None:
    """A scratch path full of quotes, $(), backticks, ; and ! comes back byte for byte,
    and nothing in it runs."""
    scratch = tmp_path / NASTY
    res = cas(None, "env", "--scratch", str(scratch), "--mountpoint", str(tmp_path / "depot"))
    assert res.code == 0, res.err
    got = eval_in(shell, res.out, tmp_path, ["JULIA_DEPOT_PATH", "JULIA_PKG_OFFLINE", "PATH"])
    assert got["JULIA_DEPOT_PATH"] == f"{scratch}:{tmp_path}/depot"
    assert got["JULIA_PKG_OFFLINE"] == "true"
    assert got["PATH"] == f"{tmp_path}/depot/julia/bin:/usr/bin:/bin"
    assert not list(tmp_path.glob("PWNED*"))
    assert scratch.is_dir() and (scratch.stat().st_mode & 0o777) == 0o700


def test_csh_and_json_forms(tmp_path: Path) -> None:
    env = job_env(Path("/depot"), tmp_path / "it's!", online=True)
    assert "JULIA_PKG_OFFLINE" not in env
    csh = render(env, "csh")
    assert f"setenv JULIA_DEPOT_PATH '{tmp_path}/it'\\''s\\!:/depot';" in csh
    assert csh.splitlines()[-1] == "setenv PATH '/depot/julia/bin':\"$PATH\";"
    js = json.loads(render(env, "json", "/usr/bin"))
    assert js["PATH"] == "/depot/julia/bin:/usr/bin"



def test_online_links_the_depots_server_registries_into_scratch(tmp_path: Path) -> None:
    """``cas env --online``: registries that came from a Pkg server (``.tree_info.toml``)
    are linked into the scratch depot, so Pkg 1.5 (which updates only the first depot's
    registries) can update them; a bundle-built one, or a name the scratch depot has
    already, is left alone.  Offline, nothing is linked."""
    depot = tmp_path / "depot"
    for name, served in (("General", True), ("Bundled", False), ("Site", True)):
        (depot / "registries" / name).mkdir(parents=True)
        (depot / "registries" / name / "Registry.toml").write_text(f'name = "{name}"\n')
        if served:
            (depot / "registries" / name / ".tree_info.toml").write_text('git-tree-sha1 = "0"\n')
    scratch = tmp_path / "scratch"
    (scratch / "registries" / "Site").mkdir(parents=True)  # the job's own updated copy
    scratch.chmod(0o700)
    off = cas(None, "env", "--scratch", str(scratch), "--mountpoint", str(depot))
    assert off.code == 0, off.err
    assert sorted(os.listdir(scratch / "registries")) == ["Site"]
    on = cas(None, "env", "--online", "--scratch", str(scratch), "--mountpoint", str(depot))
    assert on.code == 0, on.err
    regs = scratch / "registries"
    assert sorted(os.listdir(regs)) == ["General", "Site"]
    assert os.readlink(regs / "General") == str(depot / "registries" / "General")
    assert not (regs / "Site").is_symlink()
    again = cas(None, "env", "--online", "--scratch", str(scratch), "--mountpoint", str(depot))
    assert again.code == 0 and sorted(os.listdir(regs)) == ["General", "Site"]

def test_default_scratch_per_user_and_job(tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path), "SLURM_JOB_ID": "4711/../x"}
    assert default_scratch(env, 1000) == tmp_path / "cas-depot-1000-4711_.._x"
    assert default_scratch({"TMPDIR": str(tmp_path)}, 1000) == tmp_path / "cas-depot-1000"
    res = cas(None, "--json", "env", "--mountpoint", "/depot",
              env={"TMPDIR": str(tmp_path), "PBS_JOBID": "12.pbs"})
    made = tmp_path / f"cas-depot-{os.geteuid()}-12.pbs"
    assert json.loads(res.out)["JULIA_DEPOT_PATH"] == f"{made}:/depot"
    assert made.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("breakage", ["owner", "mode", "symlink"])
def test_unsafe_scratch_is_refused(tmp_path: Path, breakage: str) -> None:
    scratch = tmp_path / "scratch"
    if breakage == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        scratch.symlink_to(tmp_path / "elsewhere")
    else:
        scratch.mkdir(mode=0o700)
        if breakage == "owner":
            os.chown(scratch, 4242, 4242)
        else:
            os.chmod(scratch, 0o777)
    res = cas(None, "env", "--scratch", str(scratch))
    assert_one_line_error(res)
    assert res.code == UnsafeFolder.exit_code and res.out == ""
    with pytest.raises(UnsafeFolder):
        ensure_scratch(scratch)


def test_project_only_for_a_non_default_environment(tmp_path: Path) -> None:
    mp = tmp_path / "depot"
    (mp / "environments" / "v1.5").mkdir(parents=True)
    assert project_for(mp) is None  # Julia's default load path finds it
    shutil.rmtree(mp / "environments" / "v1.5")
    (mp / "environments" / "analysis").mkdir()
    assert project_for(mp) == f"{mp}/environments/analysis"
    (mp / "environments" / "other").mkdir()
    assert project_for(mp) is None  # ambiguous: --project NAME chooses
    assert project_for(mp, "other") == f"{mp}/environments/other"
    with pytest.raises(UsageError):
        project_for(mp, "missing")
    with pytest.raises(UsageError):
        job_env(tmp_path / "a:b", tmp_path)


@pytest.mark.julia
@pytest.mark.fuse
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="cas exec needs root and unshare(1)")
def test_real_julia_job_with_cas_env(published: dict, tmp_path: Path) -> None:
    """``eval "$(cas env)"`` inside a ``cas exec`` job, then plain ``julia``: the job's
    checksum is right, nothing is precompiled or rejected, the scratch depot gets no
    compiled/ cache, and the mounted tree is unchanged (listing before == after)."""
    events = tmp_path / "events.txt"
    out = tmp_path / "job"
    out.mkdir()
    listing = ("find /depot -printf '%P %s %T@ %m\\n' | sort | md5sum")
    script = f'''
set -e
eval "$({CAS} env --config "{published['config']}" --scratch "{tmp_path}/scratch")"
env | grep -E '^(JULIA_|CAS_DEPOT_|PATH=)' | sort > "{out}/env"
{listing} > "{out}/before"
julia --startup-file=no /depot/jobs/gen_events.jl "{events}" 300 > /dev/null
JULIA_DEBUG=loading julia --startup-file=no /depot/jobs/jetjob.jl "{events}"
{listing} > "{out}/after"
'''
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JULIA_", "CAS_"))}
    p = subprocess.run([sys.executable, "-m", "casstore", "--store", str(published["store"]),
                        "exec", "demo", "--config", str(published["config"]), "--", "bash",
                        "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"CHECKSUM {test_julia_mount.EXPECTED_CHECKSUM}" in p.stdout
    rejected, precompiled = parse_loading_log(p.stderr)
    assert rejected == [] and precompiled == [], p.stderr[-2000:]
    seen = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert seen["JULIA_DEPOT_PATH"] == f"{tmp_path}/scratch:/depot"
    assert seen["JULIA_PKG_OFFLINE"] == "true"
    assert seen["PATH"].startswith("/depot/julia/bin:")
    assert seen["CAS_DEPOT_RELEASE"].startswith("demo@")
    assert "JULIA_PROJECT" not in seen  # the example's environment is v1.5, the default
    assert (out / "before").read_text() == (out / "after").read_text()
    scratch = tmp_path / "scratch"
    assert not (scratch / "compiled").exists() or not any((scratch / "compiled").rglob("*.ji"))
