"""Micro-architecture variants: detect the host's CPU level and choose a variant.

A release may carry one overlay tree per CPU level (x86-64 psABI levels today;
the table leaves room for aarch64).  :func:`choose` picks the best level the
host (or a forced level) can run.  FORMAT §6.3: a client MUST NOT select a level
above what the host supports, so the baseline is a fallback only when it too
can run here; otherwise the release is refused (:class:`VariantRefused`).
Merging the chosen overlay over the root tree is :mod:`casstore.view.vfs`'s job.
"""

from __future__ import annotations

import platform

from casstore.errors import UsageError, VariantRefused

# Ordered from most to least capable within a family.
LEVELS: dict[str, list[str]] = {
    "x86_64": ["x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64"],
    "aarch64": ["aarch64"],
}
_ARCHSPEC = {"x86-64": "x86_64", "x86-64-v2": "x86_64_v2", "x86-64-v3": "x86_64_v3",
             "x86-64-v4": "x86_64_v4", "aarch64": "aarch64"}


def all_levels() -> list[str]:
    return [lvl for fam in LEVELS.values() for lvl in fam]


def host_levels() -> list[str]:
    """The levels this CPU can run, best first (archspec reads /proc/cpuinfo flags)."""
    import archspec.cpu

    host = archspec.cpu.host()
    fam = str(host.family)
    out = []
    for lvl in LEVELS.get(fam, []):
        target = archspec.cpu.TARGETS.get(_ARCHSPEC[lvl])
        if target is not None and host >= target:
            out.append(lvl)
    return out or LEVELS.get(platform.machine(), [])[-1:]


def choose(available: list[str], baseline: str | None, forced: str | None = None) -> str | None:
    """The best available level the host (or ``forced``) can run.

    The baseline is the fallback only if it can run here too; a release whose
    every variant is above this host's level, or is a level not known here, is
    refused with VariantRefused.
    """
    if not available:
        return None
    if forced is not None:
        if forced not in all_levels():
            raise UsageError(f"unknown CPU level {forced!r} (known: {', '.join(all_levels())})")
        runnable = _at_or_below(forced)
    else:
        runnable = host_levels()
    for lvl in runnable:
        if lvl in available:
            return lvl
    # A level this client does not know (x86-64-v5, a typo) may need anything: it is
    # treated as above the host, baseline or not (FORMAT §6.3).
    unknown = sorted(set(available) - set(all_levels()))
    who = f"forced level {forced}" if forced else f"this CPU ({', '.join(runnable) or '?'})"
    raise VariantRefused(f"no variant {who} can run: the release has "
                         f"{', '.join(sorted(available))} (baseline {baseline})"
                         + (f"; unknown level {', '.join(unknown)} is never chosen"
                            if unknown else ""))


def _at_or_below(level: str) -> list[str]:
    for fam in LEVELS.values():
        if level in fam:
            return fam[fam.index(level):]
    return [level]
