"""Run a process with a staging folder bound at the depot's final path.

Julia 1.5 precompile caches record absolute source paths, so a depot must be
built at the path it is served from (/depot).  A private mount namespace
(`unshare -m --propagation private`) gives the build that path without
touching the host's mount table; the bind disappears with the process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from casstore.errors import JuliaTimeout, NamespaceError

__all__ = ["DEPOT_MOUNT", "NamespaceError", "clean_env", "ensure_mountpoint",
           "namespaces_available", "run_bound", "run_logged"]

DEPOT_MOUNT = Path("/depot")

# mount the tree, optionally read-only, then exec the command
_SHELL = (
    'set -e; mount --bind "$1" "$2"; '
    'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi; '
    'shift 3; exec "$@"'
)


def namespaces_available() -> bool:
    """True if this process can create private mount namespaces."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def ensure_mountpoint(mountpoint: Path = DEPOT_MOUNT) -> None:
    """Create an empty mount-point directory if none exists.

    The only change on the host: a bind mount needs an existing directory.
    """
    if not mountpoint.exists():
        mountpoint.mkdir(mode=0o755)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment minus JULIA_* and LD_LIBRARY_PATH, plus `extra`.

    Stray JULIA_DEPOT_PATH/JULIA_PROJECT settings would silently change which
    caches a run sees.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JULIA_") and k != "LD_LIBRARY_PATH"}
    env.update(extra)
    return env


def run_bound(tree: Path, argv: Sequence[str], env: Mapping[str, str], *,
              readonly: bool = False, mountpoint: Path = DEPOT_MOUNT,
              timeout: float | None = None, cwd: Path | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """Run `argv` with `tree` bound at `mountpoint` inside a private namespace."""
    if not namespaces_available():
        raise NamespaceError("need root and unshare(1) for a private mount namespace")
    ensure_mountpoint(mountpoint)
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", _SHELL, "sh",
           str(tree), str(mountpoint), "ro" if readonly else "rw", *argv]
    return run_logged(cmd, env, timeout=timeout, cwd=cwd)


def run_logged(cmd: Sequence[str], env: Mapping[str, str], *, timeout: float | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run with a clean environment, capturing output; a time-out is a JuliaTimeout.

    subprocess kills the child on a time-out; the error names the program and limit
    so the CLI can print one line instead of a TimeoutExpired traceback.
    """
    try:
        return subprocess.run(list(cmd), env=clean_env(env), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        prog = Path(next((a for a in cmd if "julia" in a), cmd[0])).name
        raise JuliaTimeout(f"{prog} ran longer than {timeout:.0f} s and was stopped") from None
