"""Packaging: the wheel carries the licence, an SPDX expression, both console scripts
(``cas`` and mount(8)'s ``mount.fuse.cas``), and shell completion works as documented."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out),
                          str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("casstore-*.whl")
    return zipfile.ZipFile(whl), res.stdout + res.stderr


def _member(z: zipfile.ZipFile, suffix: str) -> str:
    (name,) = [n for n in z.namelist() if n.endswith(suffix)]
    return z.read(name).decode()


def test_wheel_has_licence_spdx_and_both_scripts(wheel) -> None:
    z, log = wheel
    meta = _member(z, ".dist-info/METADATA").splitlines()
    assert "License-Expression: MIT" in meta
    assert "MIT License" in _member(z, ".dist-info/licenses/LICENSE")
    scripts = _member(z, ".dist-info/entry_points.txt")
    assert "cas = casstore.cli.main:main" in scripts
    assert "mount.fuse.cas = casstore.cli.mount_helper:main" in scripts
    assert "License classifiers are deprecated" not in log
    assert "project.license` as a TOML table is deprecated" not in log


def test_installed_mount_helper_runs_from_outside_the_checkout(tmp_path: Path) -> None:
    """The console script works from any folder with no PYTHONPATH: ``-f`` (fake) only
    checks the arguments; a bad option is one line and exit 2."""
    helper = BIN / "mount.fuse.cas"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run([str(helper), "rel", "/depot", "-f", "-o", "config=/x.toml"],
                        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([str(helper), "rel", "/depot", "-o", "bogus"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "unknown option 'bogus'" in bad.stderr


def test_bash_completion_completes_subcommands() -> None:
    """What the README's ``eval "$(_CAS_COMPLETE=bash_source cas)"`` installs answers."""
    cas = str(BIN / "cas")
    src = subprocess.run([cas], env=dict(os.environ, _CAS_COMPLETE="bash_source"),
                         capture_output=True, text=True, timeout=60)
    assert "complete -o nosort -F _cas_completion cas" in src.stdout, src.stdout[:300]
    res = subprocess.run([cas], env=dict(os.environ, _CAS_COMPLETE="bash_complete",
                                         COMP_WORDS="cas umo", COMP_CWORD="1"),
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["plain,umount"], res.stdout
