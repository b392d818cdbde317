"""Julia depot building for casstore: spec, builder, A/B checks.

Public entry points: `build_depot`, `BuildResult`, `run_job`, `JobResult`.
Version-specific knowledge lives in `versions.py` only.
"""

from casstore.julia.abcheck import JobResult, compare, run_job
from casstore.julia.builder import BuildError, BuildResult, build_depot
from casstore.julia.spec import SpecError, load_spec

__all__ = ["BuildError", "BuildResult", "JobResult", "SpecError", "build_depot", "compare",
           "load_spec", "run_job"]
