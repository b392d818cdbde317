"""``cas env``: the variables a batch job needs to run Julia from /depot (client/jobenv.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.mount_cmd import CONFIG_HELP


@command(cli, "env")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--mountpoint", type=click.Path(path_type=Path), default=Path("/depot"),
              show_default=True, help="Where the release is (or will be) mounted.")
@click.option("--scratch", type=click.Path(path_type=Path), default=None,
              help="Writable scratch depot (default: $TMPDIR/cas-depot-<uid>[-<job id>]); "
                   "created 0700.")
@click.option("--shell", type=click.Choice(["sh", "csh", "json"]), default="sh",
              show_default=True, help="Output syntax: sh/bash/zsh, csh/tcsh, or JSON.")
@click.option("--project", metavar="NAME",
              help="Set JULIA_PROJECT to the depot's environment NAME.")
@click.option("--online", is_flag=True, help="Leave out JULIA_PKG_OFFLINE=true.")
@pass_ctx
def env(ctx: Ctx, config_path: Path | None, mountpoint: Path, scratch: Path | None,
        shell: str, project: str | None, online: bool) -> None:
    """Print the environment for a job: eval "$(cas env)".

    \b
    JULIA_DEPOT_PATH=<scratch>:/depot (a writable scratch depot in front of the
    read-only release), JULIA_PKG_OFFLINE=true, JULIA_PROJECT when the depot's
    environment is not Julia's default, PATH with /depot/julia/bin first, and,
    when MOUNTPOINT is a casstore mount visible here, CAS_DEPOT_RELEASE
    (NAME@REVISION) and CAS_DEPOT_VARIANT for the job's log.  Values are
    shell-quoted.  With --online, the depot's registries are linked into the
    scratch depot, so Pkg.add can update them from the site's Pkg server and add
    packages registered after the release was built.  Example (Slurm, bash):
      cas exec depot -- bash -c 'eval "$(cas env)"; julia job.jl'
    """
    from casstore.client.jobenv import (
        default_scratch,
        ensure_scratch,
        job_env,
        link_registries,
        render,
    )

    mountpoint = Path(os.path.abspath(mountpoint))
    scratch = Path(os.path.abspath(scratch or default_scratch(os.environ)))
    values = {**_release_vars(config_path, mountpoint),
              **job_env(mountpoint, scratch, online=online, project=project)}
    ensure_scratch(scratch)
    if online:
        link_registries(mountpoint, scratch)
    click.echo(render(values, "json" if ctx.as_json else shell, os.environ.get("PATH")))


def _release_vars(config_path: Path | None, mountpoint: Path) -> dict[str, str]:
    """What is mounted there, from its status file (nothing if it is not a cas mount)."""
    from casstore.client.config import load
    from casstore.client.mounttable import CAS_FSTYPE, fstype
    from casstore.client.status import read_status
    from casstore.errors import CasError

    if fstype(mountpoint) != CAS_FSTYPE:
        return {}
    cfg = load(config_path)  # a bad --config is an error, not silently ignored
    try:
        st = read_status(cfg, mountpoint)
    except (CasError, OSError, ValueError):
        return {}
    out = {"CAS_DEPOT_RELEASE": f"{st.get('release')}@{st.get('revision')}"}
    if st.get("variant"):
        out["CAS_DEPOT_VARIANT"] = str(st["variant"])
    return out
