"""Run ``python -m casstore`` as another uid, wherever the checkout and venv lie.

A test that drops to uid 65534 (to make a path unreadable to the command, say)
cannot use this process's interpreter as is: the checkout, and with an editable
install the package sources, may sit inside a folder only root can enter (a clone
in a 0700 home or work folder), and the venv's site-packages with them.  The
child then dies with "No module named casstore" and the test checks nothing.

:func:`readable_casstore` copies the ``casstore`` package and the installed
distributions it needs at run time into a world-readable temporary folder (hard
links where the filesystem allows, copies otherwise), and finds an interpreter the
other uid can run.  It proves the result by importing the command as that uid
before any test relies on it, so a broken set-up is one clear skip reason instead
of a misleading failure inside the test.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import casstore

NOBODY = 65534
# What `python -m casstore put` imports; the probe prints where casstore came from.
PROBE = "import casstore.cli.main, casstore.store.snapshot; print(casstore.__file__)"


class Unavailable(Exception):
    """No interpreter and package copy that the other uid can use: the reason."""


@dataclass(frozen=True)
class OtherUidPython:
    """``argv`` runs ``python -m casstore`` as ``uid`` with ``env``; ``root`` is the copy."""

    uid: int
    root: Path
    python: str
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        """The command line of ``cas ARGS`` as ``uid`` (through setpriv)."""
        return self.prefix() + [self.python, "-m", "casstore", *args]

    def prefix(self) -> list[str]:
        return ["setpriv", "--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups"]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``cas ARGS`` as the other uid from ``/`` (bytes out, no check)."""
        return subprocess.run(self.argv(*args), capture_output=True, timeout=timeout,
                              cwd="/", env=self.env)


def _dist_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(top: str = "casstore") -> list[md.Distribution]:
    """The installed distributions ``top`` requires, transitively, without extras.

    A requirement that is not installed is skipped: it is one a marker excludes on
    this Python (``async-timeout`` before 3.11, say), or the venv could not run
    casstore at all, which the probe then reports.
    """
    seen: set[str] = set()
    out: list[md.Distribution] = []
    todo = [top]
    while todo:
        name = todo.pop()
        if _dist_key(name) in seen:
            continue
        seen.add(_dist_key(name))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if name != top:
            out.append(dist)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
    return out


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link shares the inode (and its mode bits) at no cost; across
    filesystems, a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_dist(dist: md.Distribution, dest: Path) -> None:
    """The files a distribution installed under site-packages (RECORD), not its scripts."""
    base = Path(dist.locate_file("")).resolve()
    for rel in dist.files or []:
        src = (base / rel).resolve()
        if base not in src.parents or "__pycache__" in rel.parts or not src.is_file():
            continue
        target = dest / src.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            _link_or_copy(str(src), str(target))


def copy_casstore(dest: Path) -> None:
    """``casstore`` (from wherever it is imported, editable or not) and its runtime
    dependencies into ``dest``, every folder 0755 so any uid can read it."""
    pkg = Path(casstore.__file__).resolve().parent
    shutil.copytree(pkg, dest / "casstore", copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dist in runtime_distributions():
        _copy_dist(dist, dest)
    for folder, _dirs, _files in os.walk(dest):
        os.chmod(folder, 0o755)


def _candidates() -> list[str]:
    """Interpreters of this Python's version, this process's own first: the venv's
    may lie inside the same unreadable folder, its base or the system's need not."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, os.path.realpath(sys.executable),
             getattr(sys, "_base_executable", ""), shutil.which(ver) or "",
             f"/usr/bin/{ver}", f"/usr/local/bin/{ver}"]
    return list(dict.fromkeys(p for p in found if p and os.path.isfile(p)))


def readable_casstore(base: Path, uid: int = NOBODY) -> OtherUidPython:
    """A copy of casstore under ``base`` (a new 0755 folder) and an interpreter that
    imports it (not another installed one) as ``uid``; :class:`Unavailable` with every
    attempt's error if none does."""
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    copy_casstore(base)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "CAS_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(base), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
               PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    errors = []
    for python in _candidates():
        cand = OtherUidPython(uid, base, python, env)
        p = subprocess.run([*cand.prefix(), python, "-c", PROBE], capture_output=True,
                           text=True, timeout=120, cwd="/", env=env)
        where = Path(p.stdout.strip())
        if p.returncode == 0 and base in where.parents:
            return cand
        why = p.stderr.strip().splitlines() or [f"imports casstore from {where}"]
        errors.append(f"{python}: {why[-1]}")
    raise Unavailable(f"uid {uid} cannot run casstore: " + "; ".join(errors))


def make_readable_casstore(uid: int = NOBODY) -> tuple[OtherUidPython | None, str, Path]:
    """For the session fixture: (the runner or None, why not, the folder to remove)."""
    base = Path(tempfile.mkdtemp(prefix="cas-other-uid-", dir="/tmp"))
    os.chmod(base, 0o755)  # mkdtemp makes it 0700
    try:
        return readable_casstore(base / "py", uid), "", base
    except Unavailable as exc:
        return None, str(exc), base
