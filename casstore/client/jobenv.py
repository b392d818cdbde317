"""The environment a batch job needs to run Julia from a read-only ``/depot`` (``cas env``).

``eval "$(cas env)"`` in a job wrapper sets:

``JULIA_DEPOT_PATH=<scratch>:<mountpoint>``
    a writable scratch depot in front of the read-only one.  Julia writes its logs,
    REPL history, and any package or cache the release lacks, into the first depot;
    it finds everything the release holds (packages, precompile caches per CPU
    variant, registries, the environment) in ``/depot``, and never writes there.
``JULIA_PKG_OFFLINE=true``
    Pkg does not try to reach the network (no registry update on a node without
    internet).  ``--online`` leaves it out, e.g. for ``Pkg.add`` of one more package
    into the scratch depot from a site Pkg server (docs/JULIA.md).  With ``--online``
    each registry of the depot that came from a Pkg server is also linked into the
    scratch depot (:func:`link_registries`), so ``Pkg.add`` finds packages registered
    after the release was built.
``JULIA_PROJECT=<mountpoint>/environments/<name>``
    only when the depot's one environment is not Julia's default ``v<major>.<minor>``
    (which Julia's default load path already finds), or when ``--project`` names one.
``PATH=<mountpoint>/julia/bin:$PATH``
    so a job can call ``julia``.

The scratch depot defaults to ``$TMPDIR/cas-depot-<uid>[-<batch job id>]`` (``/tmp``
without ``$TMPDIR``), per user and per job (``SLURM_JOB_ID``, ``PBS_JOBID``,
``LSB_JOBID``, ``JOB_ID``, ``FLUX_JOB_ID``).  It is created 0700; an existing one
must be a real directory owned by this user that group and others cannot write,
else :class:`~casstore.errors.UnsafeFolder`: in a shared ``/tmp`` another user could
otherwise plant precompile caches or a symlink there before the job starts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from casstore.errors import UsageError
from casstore.fileio.fsutil import make_private_dir

JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "FLUX_JOB_ID")
SHELLS = ("sh", "csh", "json")
_DEFAULT_ENV = re.compile(r"^v\d+\.\d+$")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def job_id(env: Mapping[str, str]) -> str | None:
    """The batch system's job id, made safe for a file name (``123.pbs01`` stays)."""
    for var in JOB_ID_VARS:
        value = env.get(var, "").strip()
        if value:
            return _SAFE_ID.sub("_", value)[:64]
    return None


def default_scratch(env: Mapping[str, str], uid: int | None = None) -> Path:
    """``$TMPDIR/cas-depot-<uid>[-<job id>]``."""
    base = Path(env.get("TMPDIR") or "/tmp")
    jid = job_id(env)
    uid = os.geteuid() if uid is None else uid
    return base / (f"cas-depot-{uid}" + (f"-{jid}" if jid else ""))


def ensure_scratch(path: Path) -> Path:
    """Create ``path`` 0700 (parents as needed), or check an existing one is ours alone."""
    return make_private_dir(Path(os.path.abspath(path)), "scratch depot", "use --scratch DIR")


def link_registries(mountpoint: Path, scratch: Path) -> list[str]:
    """Link ``<scratch>/registries/NAME`` to ``<mountpoint>/registries/NAME`` for each
    registry of the depot that came from a Pkg server (it has ``.tree_info.toml``)
    and is not in the scratch depot yet; returns the names linked.

    Pkg 1.5 updates only the registries of the first depot (the scratch one) and
    finds packages in the registries of every depot.  Without a registry in the
    scratch depot, a package registered after the release was built is "not found
    in project, manifest or registry".  Through the link, ``Pkg.add`` updates the
    registry from the Pkg server: it replaces the link (never the read-only target)
    with the new registry when the server's is newer, and keeps reading through it
    otherwise."""
    source = mountpoint / "registries"
    try:
        names = sorted(e.name for e in os.scandir(source) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    linked = []
    for name in names:
        if not (source / name / ".tree_info.toml").is_file():
            continue  # from bundles: no Pkg server can update it
        dest = scratch / "registries" / name
        if os.path.lexists(dest):
            continue  # the job's own (updated) copy, or an earlier link
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        os.symlink(source / name, dest)
        linked.append(name)
    return linked


def project_for(mountpoint: Path, name: str | None = None) -> str | None:
    """``JULIA_PROJECT`` for the depot, or None when Julia finds the environment itself.

    ``name`` (``--project``) must exist when the mount is visible.  Otherwise the one
    environment under ``<mountpoint>/environments`` is used if it is not named like
    Julia's default ``v1.5``; with several, or none, or no visible mount: None.
    """
    envs = mountpoint / "environments"
    if name is not None:
        if "/" in name or name in ("", ".", ".."):
            raise UsageError(f"--project {name!r}: give an environment name, not a path")
        if envs.is_dir() and not (envs / name).is_dir():
            raise UsageError(f"no environment {name!r} in {envs}")
        return str(envs / name)
    try:
        found = sorted(e.name for e in os.scandir(envs) if e.is_dir())
    except OSError:
        return None
    if len(found) == 1 and not _DEFAULT_ENV.match(found[0]):
        return str(envs / found[0])
    return None


def job_env(mountpoint: Path, scratch: Path, *, online: bool = False,
            project: str | None = None) -> dict[str, str]:
    """The variables, in the order printed (PATH last: it is the one that prepends)."""
    out = {"JULIA_DEPOT_PATH": f"{scratch}:{mountpoint}"}
    if not online:
        out["JULIA_PKG_OFFLINE"] = "true"
    proj = project_for(mountpoint, project)
    if proj is not None:
        out["JULIA_PROJECT"] = proj
    out["PATH"] = f"{mountpoint}/julia/bin"  # prepended to $PATH by render()
    for key, value in out.items():
        if "\n" in value or "\0" in value:
            raise UsageError(f"{key} would hold a newline or NUL: {value!r}")
    if any(":" in str(p) for p in (mountpoint, scratch)):
        raise UsageError("the mount point and scratch folder must not contain ':' "
                         "(JULIA_DEPOT_PATH separates folders with it)")
    return out


def _csh_quote(value: str) -> str:
    """Single quotes for csh/tcsh: ``'`` closes and reopens, ``!`` is escaped (history)."""
    return "'" + value.replace("'", "'\\''").replace("!", "\\!") + "'"


def render(env: dict[str, str], shell: str, current_path: str | None = None) -> str:
    """Lines for ``eval``: every value quoted, so no path can inject a command."""
    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r} (use {', '.join(SHELLS)})")
    if shell == "json":
        full = dict(env)
        full["PATH"] = env["PATH"] + (f":{current_path}" if current_path else "")
        return json.dumps(full, indent=1)
    lines = []
    for key, value in env.items():
        if shell == "sh":
            tail = '"${PATH:+:$PATH}"' if key == "PATH" else ""
            lines.append(f"export {key}={shlex.quote(value)}{tail};")
        else:
            tail = ':"$PATH"' if key == "PATH" else ""
            lines.append(f"setenv {key} {_csh_quote(value)}{tail};")
    return "\n".join(lines)
