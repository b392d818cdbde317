"""Build a Julia depot tree plus one overlay per CPU level from a SPEC.toml.

Output layout (see docs/JULIA.md):
  out_dir/root/                  common tree, exactly as it appears at /depot
  out_dir/variants/<level>/      only the level-specific paths (same set for all)
  out_dir/meta.json              versions, cpu targets, timings, sizes
The view a node of level L mounts is root overlaid with variants/L.

Every failure is a casstore.errors.JuliaError: bad specs fail in load_spec and
package checks before any copying or Julia run; stage failures are BuildErrors
whose message is one line, with Julia's stderr tail in the build log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from casstore.errors import BuildError, InstallError, NamespaceError, UnknownVariant
from casstore.julia import sysimage as si
from casstore.julia.abcheck import parse_loading_log
from casstore.julia.environment import check_package, write_environment
from casstore.julia.filetree import (
    copy_tree,
    file_digest,
    link_tree,
    rel_files,
    set_mtimes,
    tree_digest,
    unpack_package,
)
from casstore.julia.limits import JULIA_RUN_TIMEOUT, SYSIMAGE_PEAK_BYTES
from casstore.julia.namespace import DEPOT_MOUNT, namespaces_available, run_bound
from casstore.julia.spec import DepotSpec, VariantSpec, load_spec
from casstore.julia.userenv import ImagePlan, stage_user_env

__all__ = ["BuildError", "BuildResult", "build_depot", "default_jobs"]

FORMAT = "casstore-julia-depot-1"
# Bumped when what a cached overlay entry holds changes (2: a <key>.json sidecar
# with the trace outcome, so a cache hit still reports a crashed trace).
CACHE_VERSION = 2
Log = Callable[[str], None]
T = TypeVar("T")


@dataclass
class BuildResult:
    root: Path
    variants: dict[str, Path]
    baseline: str
    meta: dict = field(default_factory=dict)


def cache_root() -> Path:
    return Path(os.environ.get("CAS_BUILD_CACHE", "/var/cache/casstore/build"))


@contextmanager
def _stage(name: str, timings: dict[str, float], log: Log) -> Iterator[None]:
    """Time one stage and log its wall time."""
    log(f"[{name}] start")
    t0 = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - t0, 2)
    log(f"[{name}] done in {timings[name]:.2f} s")


def _julia_env(spec: DepotSpec) -> dict[str, str]:
    """Env for every build run: the spec's environment, found as a node finds it."""
    env = {"JULIA_PKG_OFFLINE": "true", "JULIA_HISTORY": "/dev/null"}
    if spec.env_name != spec.layout.default_env:
        env["JULIA_PROJECT"] = str(DEPOT_MOUNT / "environments" / spec.env_name)
    return env


def check_runtime(spec: DepotSpec) -> None:
    """Julia with the spec's layout, and private namespaces: checked before staging."""
    if not namespaces_available():
        raise NamespaceError("building a depot needs root and unshare(1) for a private "
                             "mount namespace at /depot")
    prefix, lay = spec.julia_prefix, spec.layout
    for rel in ("bin/julia", lay.sysimage, lay.stdlib):
        if not (prefix / rel).exists():
            raise InstallError(f"no Julia {spec.julia_version} at {prefix} ({rel} missing); "
                               "run tools/install-julia or set julia.prefix")


def stage_runtime(spec: DepotSpec, root: Path) -> None:
    """Copy the Julia prefix to julia/, keeping the stock image as sys-stock.so."""
    prefix, lay = spec.julia_prefix, spec.layout
    copy_tree(prefix, root / "julia")
    os.replace(root / "julia" / lay.sysimage, root / "julia" / lay.stock_sysimage)


def stage_sources(spec: DepotSpec, root: Path, work: Path | None = None, store=None,
                  trusted: list[str] | None = None, log: Log = print) -> ImagePlan:
    """Packages (into dev/<Name>, or where Pkg puts them for a user's manifest), the
    environment, and the spec's extra files; returns what goes into the image."""
    if spec.user_env is not None:
        plan = stage_user_env(spec, root, work or root.parent / ".work", store,
                              trusted or [], log)
    else:
        projects = {}
        for pkg in spec.packages:
            dst = root / "dev" / pkg.name
            unpack_package(pkg.source, dst)
            projects[pkg.name] = check_package(pkg, dst)
        write_environment(spec, root, projects, spec.julia_prefix / spec.layout.stdlib)
        plan = ImagePlan.from_folders(spec)
    for dst, src in spec.files.items():
        if src.is_dir():
            copy_tree(src, root / dst)
        else:
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / dst)
    if not (root / spec.workload).is_file():
        raise BuildError(f"workload {spec.workload} is not in the staged depot")
    return plan


def input_key(spec: DepotSpec, root: Path, plan: ImagePlan) -> str:
    """Digest of everything a variant overlay is built from (except the cpu target)."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{spec.julia_version}\0{spec.epoch}\0".encode())
    h.update(si.OUTPUT_SCRIPT.encode())
    jl = root / "julia"
    for rel in (spec.layout.stock_sysimage, f"{spec.layout.libdir}/libjulia.so.1"):
        h.update(file_digest(jl / rel).encode())
    h.update(",".join(plan.roots).encode())
    if spec.user_env is not None:  # folder specs keep the keys their caches have
        h.update(b"\0" + ",".join(plan.precompile).encode())
    subs = ["dev", "environments", *sorted(spec.files)]
    if (root / "packages").is_dir():  # a user's manifest (key unchanged for folder specs)
        subs.insert(0, "packages")
    for sub in subs:
        h.update(sub.encode() + b"\0" + tree_digest(root / sub).encode())
    h.update(spec.workload.encode())
    return h.hexdigest()


def variant_key(base: str, v: VariantSpec) -> str:
    return hashlib.sha256(f"{base}\0{v.cpu_target}\0{CACHE_VERSION}".encode()).hexdigest()[:32]


def default_jobs(wanted: int | None = None) -> int:
    """How many variant builds run at once: one per core, as many as memory holds.

    Each `julia --output-o` peaks at about 2.2 GB, so a job is counted at
    SYSIMAGE_PEAK_BYTES of MemAvailable; never fewer than one.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = max(1, min(cores or 1, _mem_available() // SYSIMAGE_PEAK_BYTES))
    return limit if wanted is None else max(1, wanted)


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (unknown: room for one job)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return SYSIMAGE_PEAK_BYTES


def variant_log(log: Log, name: str) -> Log:
    """The log of one variant's work: lines that do not start with a `[stage NAME]`
    tag get `[NAME]`, so interleaved lines of concurrent builds stay attributable."""
    return lambda msg: log(msg if msg.startswith("[") else f"[{name}] {msg}")


def _tail_to_log(stderr: str, log: Log) -> None:
    for line in stderr[-4000:].splitlines():
        log(f"  | {line}")


class _Builder:
    """State of one build: spec, folders, the lazily produced trace."""

    def __init__(self, spec: DepotSpec, out_dir: Path, log: Log):
        self.spec, self.log = spec, log
        self.plan = ImagePlan.from_folders(spec)
        self.root = out_dir / "root"
        self.work = out_dir / ".work"
        self.env = _julia_env(spec)
        self._trace: Path | None = None
        self._trace_lock = threading.Lock()
        self.trace_result: si.TraceResult | None = None
        self.timings: dict[str, float] = {}

    def scratch(self, name: str) -> Path:
        d = self.work / f"scratch-{name}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def trace(self) -> Path:
        """Run the workload once with --trace-compile (shared by all variants).

        A crashed trace run is not fatal (see sysimage.py): its outcome is kept in
        `trace_result` for the log, the cache sidecar and meta.json.  Locked: a
        level whose cached overlay vanished after the build checked for it asks for
        the trace from its own thread.
        """
        with self._trace_lock:
            return self._run_trace()

    def _run_trace(self) -> Path:
        if self._trace is None:
            path = self.work / "trace.jl"
            with _stage("trace workload", self.timings, self.log):
                self.trace_result = si.trace_workload(
                    self.root, self.spec.layout, self.spec.workload, self.scratch("trace"),
                    path, self.env, self.log)
            self._trace = path
        return self._trace

    def variant_tree(self, v: VariantSpec, overlay: Path) -> Path:
        """A hard-linked copy of root with the overlay's files added."""
        tree = self.work / f"tree-{v.name}"
        shutil.rmtree(tree, ignore_errors=True)
        link_tree(self.root, tree)
        link_tree(overlay, tree)
        return tree

    def build_overlay(self, v: VariantSpec, dst: Path, log: Log) -> None:
        """Sysimage for `v`, then precompile caches of the non-image packages.

        Runs concurrently with other variants' builds: everything it writes is
        named after the variant, and the shared trace exists before any starts.
        """
        lay = self.spec.layout
        script = self.work / f"sysimage-{v.name}.jl"
        script.write_text(si.output_script(lay, self.plan.roots, self.trace(),
                                           self.spec.workload, self.plan.excluded_uuids))
        obj = self.work / f"sys-{v.name}.o"
        with _stage(f"sysimage {v.name}", self.timings, log):
            si.generate_object(self.root, lay, v.cpu_target, script, obj,
                               self.scratch(v.name), self.env, log)
            si.link_sysimage(obj, dst / "julia" / lay.sysimage, self.spec.julia_prefix, lay,
                             log)
        obj.unlink()
        with _stage(f"precompile {v.name}", self.timings, log):
            self.precompile(v, dst, log)

    def precompile(self, v: VariantSpec, dst: Path, log: Log) -> None:
        """Create .ji caches against the variant's image; copy them into the overlay."""
        names = self.plan.precompile
        if not names:
            return
        tree = self.variant_tree(v, dst)
        scratch = self.scratch(f"pc-{v.name}")
        code = "for p in ARGS; Base.require(Main, Symbol(p)); end"
        argv = si.julia_argv(self.spec.layout, "-e", code, *names)
        env = {**self.env, **self.spec.layout.precompile_env(v.cpu_target),
               "JULIA_DEPOT_PATH": f"{scratch}:{DEPOT_MOUNT}"}
        proc = run_bound(tree, argv, env, readonly=True, timeout=JULIA_RUN_TIMEOUT)
        if proc.returncode != 0:
            _tail_to_log(proc.stderr, log)
            raise BuildError(f"precompile for {v.name} failed ({proc.returncode}): "
                             f"{si.first_error(proc.stderr)}")
        compiled = self.spec.layout.compiled_subdir()
        if not (scratch / compiled).is_dir():
            raise BuildError(f"precompile for {v.name} wrote no caches (packages in the image?)")
        copy_tree(scratch / compiled, dst / compiled)
        shutil.rmtree(tree)

    def overlay(self, v: VariantSpec, key: str, log: Log) -> tuple[Path, bool, dict]:
        """The cached overlay for `key` and its trace outcome, building it on a miss."""
        cached = cache_root() / "overlays" / key
        sidecar = cached.with_name(f"{key}.json")
        if cached.is_dir():
            return cached, True, _read_sidecar(sidecar)
        _drop_stale_tmp(cached.parent)
        tmp = cached.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self.build_overlay(v, tmp, log)
            set_mtimes(tmp, self.spec.epoch)
            assert self.trace_result is not None  # build_overlay ran the trace
            info = {"trace": self.trace_result.as_meta()}
            sidecar.write_text(json.dumps(info, sort_keys=True) + "\n")
            os.replace(tmp, cached)
        except OSError:
            if not cached.is_dir():  # lost a race with a concurrent build: use theirs
                raise
            info = _read_sidecar(sidecar)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached, False, info

    def write_preload(self) -> Path:
        """The script that loads the non-image packages from their .ji (written once,
        before concurrent validations read it)."""
        preload = self.work / "preload.jl"
        if not preload.is_file():
            self.work.mkdir(parents=True, exist_ok=True)
            preload.write_text("".join(f"using {n}\n" for n in self.plan.precompile))
        return preload

    def validate(self, v: VariantSpec, overlay: Path, log: Log) -> dict:
        """Run the workload on root+overlay bound read-only at /depot.

        Evidence that the variant is complete: no rejected cache, no
        precompilation, nothing written to the scratch depot's compiled/.
        """
        tree = self.variant_tree(v, overlay)
        scratch = self.scratch(f"val-{v.name}")
        preload = self.write_preload()
        argv = si.julia_argv(self.spec.layout, "-L", str(preload),
                             str(DEPOT_MOUNT / self.spec.workload))
        env = {**self.env, "JULIA_DEPOT_PATH": f"{scratch}:{DEPOT_MOUNT}",
               "JULIA_DEBUG": "loading"}
        proc = run_bound(tree, argv, env, readonly=True, timeout=JULIA_RUN_TIMEOUT)
        shutil.rmtree(tree)
        if "Unable to find compatible target" in proc.stderr:
            log(f"[validate {v.name}] host CPU cannot run {v.cpu_target}; not validated")
            return {"validated": False, "reason": "host cpu lacks target"}
        rejected, precompiled = parse_loading_log(proc.stderr)
        written = sorted(rel_files(scratch / "compiled")) if (scratch / "compiled").exists() else []
        if proc.returncode != 0 or rejected or precompiled or written:
            _tail_to_log(proc.stderr, log)
            raise BuildError(f"variant {v.name} does not load cleanly: rc={proc.returncode}, "
                             f"{len(rejected)} rejected caches, {len(precompiled)} "
                             f"precompiled, wrote {written[:3]}: {si.first_error(proc.stderr)}")
        loads = [ln for ln in proc.stderr.splitlines() if "Loading" in ln or "loading" in ln]
        return {"validated": True, "loading_log": loads}


def _read_sidecar(path: Path) -> dict:
    """A cached overlay's recorded trace outcome; a missing or bad sidecar says so."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("trace"), dict):
        return {"trace": {"ok": None, "note": f"trace outcome not recorded ({path.name})"}}
    return {"trace": info["trace"]}


def _drop_stale_tmp(folder: Path) -> None:
    """Remove half-built overlays left by builds that died (their pid is gone)."""
    for tmp in folder.glob("*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _sizes(overlay: Path, spec: DepotSpec) -> dict[str, int]:
    return {rel: (overlay / rel).stat().st_size for rel in sorted(rel_files(overlay))}


def _check_same_paths(variants: dict[str, Path]) -> None:
    sets = {name: rel_files(p) for name, p in variants.items()}
    first = next(iter(sets.values()))
    for name, s in sets.items():
        if s != first:
            raise BuildError(f"variant {name} has different paths: {sorted(s ^ first)}")


def _prepare(out_dir: Path) -> None:
    for sub in ("root", "variants", ".work"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def choose_variants(spec: DepotSpec, only: list[str] | None) -> list[VariantSpec]:
    """The spec's variants, or the named subset of them (in spec order)."""
    if not only:
        return list(spec.variants)
    known = {v.name for v in spec.variants}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UnknownVariant(f"variant {unknown[0]!r} is not in the spec "
                             f"(it has: {', '.join(v.name for v in spec.variants)})")
    return [v for v in spec.variants if v.name in only]


def _each(variants: list[VariantSpec], jobs: int, fn: Callable[[VariantSpec], T]) -> dict[str, T]:
    """fn(v) for every variant, `jobs` at a time (threads: the work is in subprocesses).

    On a failure no further variant starts; the running ones finish (their Julia
    runs are bounded by the limits in limits.py) and the first failure in spec
    order is raised, as the serial build would have raised it.
    """
    if jobs <= 1:
        return {v.name: fn(v) for v in variants}
    with ThreadPoolExecutor(jobs, thread_name_prefix="cas-variant") as pool:
        futures: dict[str, Future[T]] = {v.name: pool.submit(fn, v) for v in variants}
        wait(futures.values(), return_when=FIRST_EXCEPTION)
        for f in futures.values():
            f.cancel()
    for f in futures.values():
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()  # type: ignore[misc]
    return {name: f.result() for name, f in futures.items()}


def _overlays(b: _Builder, variants: list[VariantSpec], base: str, jobs: int,
              log: Log) -> dict[str, tuple[Path, bool, dict, str]]:
    """Each variant's cached overlay, building the misses `jobs` at a time."""
    keys = {v.name: variant_key(base, v) for v in variants}
    misses = [v.name for v in variants if not (cache_root() / "overlays" / keys[v.name]).is_dir()]
    if misses:  # the trace is shared: run it once before the builds start
        b.trace()
    log(f"[overlays] {len(misses)} of {len(variants)} to build, "
        f"{min(jobs, max(1, len(misses)))} at a time")

    def one(v: VariantSpec) -> tuple[Path, bool, dict, str]:
        vlog = variant_log(log, v.name)
        with _stage(f"overlay {v.name}", b.timings, vlog):
            cached, hit, info = b.overlay(v, keys[v.name], vlog)
        vlog(f"[overlay {v.name}] key {keys[v.name]} {'cache hit' if hit else 'built'}")
        return cached, hit, info, keys[v.name]

    return _each(variants, min(jobs, max(1, len(misses))), one)


def build_depot(spec_path: Path, out_dir: Path, log: Log, store=None,
                trusted: list[str] | None = None, jobs: int | None = None,
                only: list[str] | None = None) -> BuildResult:
    """Build the depot described by `spec_path` into `out_dir` (replacing it).

    Expensive overlays (sysimage + caches per cpu target) come from
    $CAS_BUILD_CACHE when their input key matches; misses build `jobs` at a time
    (default: default_jobs()).  `only` names the variants to build (default all:
    a builder of one CPU level builds just its own).  `store` and `trusted`
    (public keys) serve a spec whose packages come from a registry release.
    """
    spec = load_spec(spec_path)
    chosen = choose_variants(spec, only)
    jobs = default_jobs(jobs)
    check_runtime(spec)
    out_dir = Path(out_dir).resolve()
    _prepare(out_dir)
    b = _Builder(spec, out_dir, log)
    t0 = time.monotonic()
    with _stage("stage sources", b.timings, log):
        b.plan = stage_sources(spec, b.root, b.work, store, trusted, log)
    with _stage("stage runtime", b.timings, log):
        stage_runtime(spec, b.root)
        set_mtimes(b.root, spec.epoch)
    with _stage("input key", b.timings, log):
        base = input_key(spec, b.root, b.plan)
    built = _overlays(b, chosen, base, jobs, log)
    variants, vmeta = {}, {}
    for v in chosen:
        cached, hit, info, key = built[v.name]
        if info["trace"].get("ok") is False:
            log(f"[overlay {v.name}] WARNING: {info['trace']['note']}")
        dst = out_dir / "variants" / v.name
        copy_tree(cached, dst)
        set_mtimes(dst, spec.epoch)
        variants[v.name] = dst
        vmeta[v.name] = {"cpu_target": v.cpu_target, "key": key, "cache_hit": hit,
                         "sizes": _sizes(dst, spec), "trace": info["trace"]}
    _check_same_paths(variants)
    b.write_preload()

    def check(v: VariantSpec) -> dict:
        vlog = variant_log(log, v.name)
        with _stage(f"validate {v.name}", b.timings, vlog):
            return b.validate(v, variants[v.name], vlog)

    for name, checked in _each(chosen, min(jobs, len(chosen)), check).items():
        vmeta[name].update(checked)
    shutil.rmtree(b.work, ignore_errors=True)
    set_mtimes(b.root, spec.epoch)
    b.timings["total"] = round(time.monotonic() - t0, 2)
    baseline = spec.baseline if spec.baseline in variants else chosen[0].name
    meta = {
        "format": FORMAT, "julia_version": spec.julia_version, "environment": spec.env_name,
        "baseline": baseline, "variants": vmeta, "input_key": base,
        "spec_variants": {v.name: v.cpu_target for v in spec.variants},
        "spec_baseline": spec.baseline, "jobs": jobs,
        "packages": b.plan.packages,
        "variant_paths": sorted(rel_files(variants[baseline])),
        "timings": b.timings, "epoch": spec.epoch,
        "trace_crashed": sorted(k for k, m in vmeta.items() if m["trace"].get("ok") is False),
        "job": None if spec.job is None else {"command": list(spec.job.command),
                                              "setup": list(spec.job.setup)},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return BuildResult(root=b.root, variants=variants, baseline=baseline, meta=meta)
