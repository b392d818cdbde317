"""tools/install-julia: a fresh prefix installs, runs, relocates, and is cached."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from casstore.julia.install import INSTALLER, ensure_julia

pytestmark = [
    pytest.mark.julia,
    pytest.mark.skipif(os.geteuid() != 0, reason="installer needs root (apt-get)"),
]

CHECK = "using LinearAlgebra, LibGit2; println(VERSION, ' ', det([2.0 1.0; 1.0 2.0]))"


def _julia(prefix: Path, code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k != "LD_LIBRARY_PATH" and not k.startswith("JULIA_")}
    env["JULIA_DEPOT_PATH"] = str(tmp / "depot")
    return subprocess.run([str(prefix / "bin/julia"), "--startup-file=no", "-e", code],
                          env=env, capture_output=True, text=True, timeout=300)


def _install(prefix: Path, apt_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CAS_JULIA_APT_DIR=str(apt_dir))
    return subprocess.run(["bash", str(INSTALLER), "--prefix", str(prefix)], env=env,
                          capture_output=True, text=True, timeout=1800)


def test_default_prefix_runs_linear_algebra(tmp_path: Path) -> None:
    prefix = ensure_julia()
    proc = _julia(prefix, CHECK, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1.5.3 3.0"


@pytest.mark.slow
def test_clean_prefix_install_relocate_and_cache(tmp_path: Path) -> None:
    # Reuse the downloaded .debs of the default install (network is not the subject).
    ensure_julia()
    apt_dir = Path("/var/cache/casstore/apt-bullseye")
    prefix = tmp_path / "jl"
    proc = _install(prefix, apt_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(prefix)
    assert not [p for p in prefix.rglob("*") if p.is_symlink() and not p.exists()]
    run = _julia(prefix, CHECK, tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "1.5.3 3.0", run.stderr

    moved = tmp_path / "elsewhere" / "julia"
    shutil.copytree(prefix, moved, symlinks=True)
    shutil.rmtree(prefix)
    run = _julia(moved, CHECK + "; println(Sys.BINDIR)", tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == str(moved / "bin")

    shutil.move(moved, prefix)
    t0 = time.monotonic()
    again = _install(prefix, apt_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(prefix)
    assert time.monotonic() - t0 < 10
