"""``cas doctor``'s model: one check's outcome, the options, what checks pass on.

The checks live in :mod:`casstore.client.doctor_checks` (config, keys, mount,
sources, cache) and :mod:`casstore.client.doctor_julia` (CPU level, Julia); the
runner that orders them is :mod:`casstore.client.doctor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from casstore.client.config import ClientConfig
from casstore.releases.release import Release

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
MIN_FREE = 1 << 30  # bytes free on the cache's filesystem below which `cache` fails
JULIA = "julia/bin/julia"  # where a depot built by `cas depot build` keeps its Julia
JULIA_TIMEOUT_S = 300.0
EXEC_MOUNTPOINT = Path("/depot")


@dataclass
class Check:
    """One probe's outcome: ``OK``, ``FAIL`` or ``SKIP``, and one line of detail."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        """``OK   name: detail`` (status padded to 4, so the names line up)."""
        return f"{self.status:<4} {self.name}: {self.detail}"

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Options:
    """What to probe; ``target`` is a release (``NAME``, ``NAME@N``) or a mount point."""

    config_path: Path | None = None
    target: str | None = None
    store: str | None = None  # overrides the config's source, as --store does for mount
    arch: str | None = None
    min_free: int = MIN_FREE
    julia: bool = True
    julia_timeout: float = JULIA_TIMEOUT_S
    exec_mountpoint: Path = EXEC_MOUNTPOINT


@dataclass
class State:
    """What earlier checks found, for the later ones (filled in as they run)."""

    cfg: ClientConfig | None = None
    trusted: list[str] = field(default_factory=list)
    name: str | None = None
    revision: int | None = None
    mountpoint: Path | None = None  # a live mount to probe Julia through
    mount_variant: str | None = None
    release: Release | None = None  # the first that verified
    release_source: str | None = None
    variant_refused: str = ""  # set by the cpu check: no variant of the release runs here
