"""Locate or install the private Julia prefix with the packaged installer script.

The script ships inside the package (``casstore/julia/install-julia.sh``, package
data), so an installed wheel finds it next to this module; ``tools/install-julia``
in a checkout is a link to the same file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from casstore.errors import InstallError
from casstore.julia.limits import JULIA_RUN_TIMEOUT

__all__ = ["INSTALLER", "InstallError", "ensure_julia", "installer"]

INSTALLER = Path(__file__).resolve().with_name("install-julia.sh")


def installer() -> Path:
    """The installer script, or a one-line error when the package lacks it."""
    if not INSTALLER.is_file():
        raise InstallError(f"the Julia installer {INSTALLER} is missing from this casstore "
                           "installation; reinstall casstore or install Julia yourself and "
                           "set CAS_JULIA_PREFIX")
    return INSTALLER


def ensure_julia(prefix: Path | None = None, *, timeout: float = JULIA_RUN_TIMEOUT) -> Path:
    """Run the (idempotent, cached) installer and return the prefix it printed.

    A complete prefix only costs one verification run (~0.4 s).
    """
    argv = ["bash", str(installer())]
    if prefix is not None:
        argv += ["--prefix", str(prefix)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={k: v for k, v in os.environ.items()
                                   if k != "LD_LIBRARY_PATH"}, check=False)
    except subprocess.TimeoutExpired:
        raise InstallError(f"install-julia ran longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise InstallError(f"install-julia failed ({proc.returncode}): "
                           f"{lines[-1] if lines else 'no output'}")
    return Path(proc.stdout.strip().splitlines()[-1])
