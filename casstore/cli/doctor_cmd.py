"""``cas doctor``: is this node able to mount and run a release?  (casstore/client/doctor.py)"""

from __future__ import annotations

from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.mount_cmd import CONFIG_HELP, _explicit_store, config_source


@command(cli, "doctor")
@click.argument("target", required=False, metavar="[MOUNTPOINT|RELEASE]")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--arch", metavar="LEVEL", help="Probe as if the host ran this CPU level.")
@click.option("--min-free", default="1G", show_default=True, metavar="SIZE",
              help="Free space the cache's filesystem must have (e.g. 512M, 20G).")
@click.option("--no-julia", is_flag=True, help="Do not start the release's Julia.")
@click.option("--julia-timeout", type=click.FloatRange(1, 3600), default=300.0,
              show_default=True, help="Seconds `julia -e 1` (and its mount) may take.")
@pass_ctx
def doctor(ctx: Ctx, target: str | None, config_path: Path | None, arch: str | None,
           min_free: str, no_julia: bool, julia_timeout: float) -> None:
    """Check the client setup, one line per check: OK, FAIL (with why) or SKIP.

    \b
    Checks: config, keys, mount (if MOUNTPOINT), source (each one: reachable, serves
    a release that verifies with the trusted keys and is not expired), cache (owner,
    mode, free space >= --min-free), cpu (levels, the variant chosen), julia
    (`julia -e 1` through MOUNTPOINT, else from a private mount of RELEASE; needs root).
    A target with a '/' is a MOUNTPOINT (release names hold none).  Without a
    target every release of each source is verified and Julia is skipped.
    Exit status 0 if nothing failed, else 58.  Like `cvmfs_config probe`.
    """
    from casstore.client.config import parse_size
    from casstore.client.doctor import Options, failed, run
    from casstore.errors import DoctorFailed

    store = _explicit_store(ctx, config_source(config_path))
    opts = Options(config_path=config_path, target=target, store=store, arch=arch,
                   min_free=parse_size(min_free), julia=not no_julia,
                   julia_timeout=julia_timeout)
    if ctx.as_json:
        checks = run(opts)
        ctx.emit({"ok": not failed(checks), "checks": [c.as_dict() for c in checks]})
    else:
        checks = run(opts, report=lambda c: click.echo(c.line()))
    bad = failed(checks)
    if bad:
        raise DoctorFailed(f"{len(bad)} of {len(checks)} checks failed: "
                           f"{', '.join(c.name for c in bad)}")
