"""Locate or install the private Julia prefix via tools/install-julia."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "tools" / "install-julia"


class InstallError(RuntimeError):
    """tools/install-julia failed; stderr is in the message."""


def ensure_julia(prefix: Path | None = None, *, timeout: float = 1800) -> Path:
    """Run the (idempotent, cached) installer and return the prefix it printed.

    A complete prefix only costs one verification run (~0.4 s).
    """
    argv = ["bash", str(INSTALLER)]
    if prefix is not None:
        argv += ["--prefix", str(prefix)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"},
                          check=False)
    if proc.returncode != 0:
        raise InstallError(f"install-julia failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])
