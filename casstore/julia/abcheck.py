"""Run a job against a depot and describe what Julia actually used.

`run_job` runs one job, any Julia command line (optionally inside a private
namespace with a tree bound at /depot), and returns its checksum (a
`CHECKSUM <hex>` line, if the job prints one), wall time and the loading log.
With `probe=True` a small Julia file is preloaded (`-L`) that, at exit,
records every loaded module with its build id and a digest of all method
instances that have native code.  Two runs of one job are "the same" for the
A/B check when checksum, modules+build ids and that digest agree: e.g. a local
staging depot bound at /depot versus the FUSE-mounted release.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from casstore.julia.limits import JULIA_RUN_TIMEOUT
from casstore.julia.namespace import run_bound, run_logged

PROBE = r"""
# casstore A/B probe (loaded with -L): report modules and compiled code at exit.
let out = get(ENV, "CAS_ABCHECK_OUT", "")
    function fnv(h::UInt64, s::AbstractString)
        for b in codeunits(s)
            h = (h ⊻ b) * 0x00000100000001b3
        end
        return h
    end
    function compiled(mi)
        ci = isdefined(mi, :cache) ? mi.cache : nothing
        while ci !== nothing
            ci.invoke != C_NULL && return true
            ci = isdefined(ci, :next) ? ci.next : nothing
        end
        return false
    end
    function methodtables(mods)
        mts = Set{Any}([Core.Typeof(DataType).name.mt])
        for mod in mods, n in names(mod; all=true, imported=false)
            isdefined(mod, n) || continue
            v = getfield(mod, n)
            v isa Function && push!(mts, typeof(v).name.mt)
        end
        return mts
    end
    function report(io)
        # Run pending finalizers now, in every run: otherwise whether a GC (and so a
        # finalizer, which compiles its method) happened before exit depends on load.
        GC.gc(true); GC.gc(true)
        mods = collect(values(Base.loaded_modules))
        append!(mods, [Base, Core, Main])
        for (k, m) in sort!(collect(Base.loaded_modules); by=kv -> kv[1].name)
            p = something(pathof(m), "")
            println(io, "module\t", k.name, '\t', something(k.uuid, ""), '\t',
                    Base.module_build_id(m), '\t', p)
        end
        # Snapshot first, stringify after: printing types compiles show methods,
        # which must not leak into the set being measured.
        mis = Core.MethodInstance[]
        for mt in methodtables(unique(mods))
            Base.visit(mt) do meth
                sv = meth.specializations
                for i in 1:length(sv)
                    mi = try sv[i] catch; nothing end  # unassigned slots throw
                    mi isa Core.MethodInstance && compiled(mi) && push!(mis, mi)
                end
            end
        end
        sigs = sort!(unique!([string(mi.specTypes) for mi in mis]))
        dump = get(ENV, "CAS_ABCHECK_SIGS", "")
        # One file per process (DUMP.<pid>): an A/B check runs two jobs.
        isempty(dump) || open(f -> foreach(s -> println(f, s), sigs),
                              dump * "." * string(getpid()), "w")
        h = 0xcbf29ce484222325
        for s in sigs; h = fnv(h, s); h = fnv(h, "\n"); end
        println(io, "mi_count\t", length(sigs))
        println(io, "mi_digest\t", string(h; base=16, pad=16))
        println(io, "sysimage\t", unsafe_string(Base.JLOptions().image_file))
        println(io, "cpu\t", Sys.CPU_NAME)
    end
    isempty(out) || atexit(() -> open(report, out, "w"))
end
"""

_CHECKSUM = re.compile(r"^CHECKSUM ([0-9a-f]+)$", re.M)
_REJECT = re.compile(r"Rejecting.*cache file", re.I)
_PRECOMPILE = re.compile(r"Precompiling ")


@dataclass
class ModuleInfo:
    name: str
    uuid: str
    build_id: str
    path: str


@dataclass
class JobResult:
    returncode: int
    checksum: str | None
    wall_time: float
    stdout: str
    stderr: str
    rejected: list[str] = field(default_factory=list)
    precompiled: list[str] = field(default_factory=list)
    loaded_modules: list[ModuleInfo] = field(default_factory=list)
    mi_count: int = 0
    mi_digest: str = ""
    sysimage: str = ""

    @property
    def clean_load(self) -> bool:
        """No rejected cache and no precompilation during the run."""
        return not self.rejected and not self.precompiled


def parse_loading_log(stderr: str) -> tuple[list[str], list[str]]:
    """Rejected-cache and precompiling lines of a JULIA_DEBUG=loading log."""
    lines = stderr.splitlines()
    return ([ln for ln in lines if _REJECT.search(ln)],
            [ln for ln in lines if _PRECOMPILE.search(ln)])


def _parse_probe(text: str, res: JobResult) -> None:
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "module":
            res.loaded_modules.append(ModuleInfo(*rest.split("\t", 3)))
        elif kind == "mi_count":
            res.mi_count = int(rest)
        elif kind == "mi_digest":
            res.mi_digest = rest
        elif kind == "sysimage":
            res.sysimage = rest


def run_job(julia_bin: str | Path, depot_path_env: str, job: Sequence[str | Path],
            extra_args: Sequence[str] = (), *, tree: Path | None = None,
            readonly: bool = True, probe: bool = False, wrapper: Sequence[str] = (),
            debug_loading: bool = True, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = JULIA_RUN_TIMEOUT) -> JobResult:
    """Run `julia [extra_args] JOB...` (a script and its arguments); collect the evidence.

    `extra_args` go to Julia (e.g. `-J <image>`, `--cpu-target=...`).
    `tree`, if given, is bound at /depot in a private mount namespace (paths
    in the arguments are then as seen inside it, e.g. /depot/julia/bin/julia).
    `wrapper` prefixes the command, e.g. `cas exec RELEASE --` to run Julia
    from a FUSE mount of a release in its own namespace.
    """
    with tempfile.TemporaryDirectory(prefix="cas-abcheck-") as tmp:
        out = Path(tmp) / "probe.tsv"
        pre = ["-L", str(Path(tmp) / "probe.jl")] if probe else []
        (Path(tmp) / "probe.jl").write_text(PROBE)
        argv = [*wrapper, str(julia_bin), "--startup-file=no", "--history-file=no", *pre,
                *extra_args, *map(str, job)]
        e = {"JULIA_DEPOT_PATH": depot_path_env, **(env or {})}
        if debug_loading:
            e["JULIA_DEBUG"] = "loading"
        if probe:
            e["CAS_ABCHECK_OUT"] = str(out)
        t0 = time.monotonic()
        if tree is not None:
            proc = run_bound(tree, argv, e, readonly=readonly, timeout=timeout, cwd=cwd)
        else:
            proc = run_logged(argv, e, timeout=timeout, cwd=cwd)
        wall = time.monotonic() - t0
        m = _CHECKSUM.search(proc.stdout)
        rejected, precompiled = parse_loading_log(proc.stderr)
        res = JobResult(proc.returncode, m.group(1) if m else None, round(wall, 3),
                        proc.stdout, proc.stderr, rejected, precompiled)
        if probe and out.is_file():
            _parse_probe(out.read_text(), res)
    return res


def compare(a: JobResult, b: JobResult) -> list[str]:
    """Human-readable differences between two runs ([] means A/B identical)."""
    diffs = []
    if a.checksum != b.checksum:
        diffs.append(f"checksum {a.checksum} != {b.checksum}")
    ma = {m.name: m for m in a.loaded_modules}
    mb = {m.name: m for m in b.loaded_modules}
    for name in sorted(ma.keys() | mb.keys()):
        x, y = ma.get(name), mb.get(name)
        if x is None or y is None:
            diffs.append(f"module {name} only in {'b' if x is None else 'a'}")
        elif (x.uuid, x.build_id) != (y.uuid, y.build_id):
            diffs.append(f"module {name} build id {x.build_id} != {y.build_id}")
    if (a.mi_count, a.mi_digest) != (b.mi_count, b.mi_digest):
        diffs.append(f"compiled methods {a.mi_count}/{a.mi_digest} != {b.mi_count}/{b.mi_digest}")
    for label, r in (("a", a), ("b", b)):
        if not r.clean_load:
            diffs.append(f"run {label}: {len(r.rejected)} rejected caches, "
                         f"{len(r.precompiled)} precompilations")
    return diffs
