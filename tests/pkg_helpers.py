"""Helpers for the registry and Pkg-server tests: shared bundles, Julia, git repos."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from casstore.julia.install import ensure_julia

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "julia-packages"
BUNDLES = SHARED / "bundles"
PACKAGES_TOML = SHARED / "packages.toml"
GENERAL_UUID = "23338594-aafe-5451-b93e-139f81909106"
TINY_UUID = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PKG_UUID = "44cfe95a-1eb2-52ea-b672-e2afdf69b78f"

needs_bundles = pytest.mark.skipif(not PACKAGES_TOML.exists(),
                                   reason=f"shared bundles not found at {SHARED}")


def packages() -> dict[str, dict]:
    """packages.toml as name -> entry."""
    return {p["name"]: p for p in tomllib.loads(PACKAGES_TOML.read_text())["package"]}


def unreachable_repo_urls(path: Path) -> Path:
    """A --repo-urls file whose URLs refuse connections, so Pkg's git fallback fails fast
    and no test can pass by fetching from the internet."""
    lines = [f'[[package]]\nname = "{n}"\nrepo = "http://127.0.0.1:9/{n}.jl.git"\n'
             for n in list(packages()) + ["Tiny"]]
    path.write_text("\n".join(lines))
    return path


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org",
               GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          env=env, text=True).stdout


def make_artifact(folder: Path) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "hello.txt").write_text("hello from an artifact\n")
    (folder / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(folder / "bin" / "run.sh", 0o755)
    return folder


def tiny_release(repo: Path, version: str, artifact_sha1: str) -> None:
    """Commit and tag version ``version`` of Tiny, a package with an artifact."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True)
        git(repo, "init", "-q")
    (repo / "src").mkdir(exist_ok=True)
    (repo / "Project.toml").write_text(
        f'name = "Tiny"\nuuid = "{TINY_UUID}"\nversion = "{version}"\n\n'
        f'[deps]\nPkg = "{PKG_UUID}"\n\n[compat]\njulia = "1.5"\n')
    (repo / "Artifacts.toml").write_text(f'[hello]\ngit-tree-sha1 = "{artifact_sha1}"\n')
    (repo / "src" / "Tiny.jl").write_text(
        'module Tiny\nusing Pkg.Artifacts\n'
        'hello() = read(joinpath(artifact"hello", "hello.txt"), String)\n'
        f'version() = "{version}"\nend\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"v{version}")
    git(repo, "tag", f"v{version}")


def julia(code: str, depot: Path, server: str | None = None, timeout: float = 900,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run real Julia 1.5.3 with a private depot, talking only to ``server``."""
    prefix = ensure_julia()
    env = {k: v for k, v in os.environ.items()
           if k != "LD_LIBRARY_PATH" and not k.startswith("JULIA_")
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(JULIA_DEPOT_PATH=str(depot), no_proxy="127.0.0.1,localhost",
               JULIA_PKG_SERVER=server or "", JULIA_PKG_PRECOMPILE_AUTO="0")
    return subprocess.run([str(prefix / "bin" / "julia"), "--startup-file=no", "-e", code],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def manifest_versions(manifest: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, git-tree-sha1) of the registered packages in a Manifest."""
    out = {}
    for name, entries in tomllib.loads(manifest.read_text()).items():
        for e in entries:
            if "git-tree-sha1" in e:
                out[name] = (e["version"], e["git-tree-sha1"])
    return out
