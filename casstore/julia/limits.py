"""Time limits for the Julia processes the builder and the checks start.

One place, so that a site with slow nodes changes them once.  They bound hangs,
not normal work: a sysimage build takes ~100 s per CPU target on 2 cores, a
trace, precompile or validation run a few seconds to minutes.
"""

from __future__ import annotations

JULIA_RUN_TIMEOUT = 1800.0  # s: install, trace, precompile, validation, one job
SYSIMAGE_TIMEOUT = 3600.0  # s: one `julia --output-o` (compiles all of Base again)
SYSIMAGE_PEAK_BYTES = 2_500_000_000  # memory one variant build is counted at (peak ~2.2 GB)
