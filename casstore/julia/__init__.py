"""Julia depot building for casstore: spec, builder, A/B checks.

Public entry points: `build_depot`, `BuildResult`, `run_job`, `JobResult`.
Version-specific knowledge lives in `versions.py` only; every error raised here is
a `casstore.errors.JuliaError` (codes 20 and 40-49).
"""

from casstore.errors import BuildError, JuliaError, SpecError
from casstore.julia.abcheck import JobResult, compare, run_job
from casstore.julia.builder import BuildResult, build_depot
from casstore.julia.spec import load_spec

__all__ = ["BuildError", "BuildResult", "JobResult", "JuliaError", "SpecError", "build_depot",
           "compare", "load_spec", "run_job"]
