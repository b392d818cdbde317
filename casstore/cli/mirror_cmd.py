"""``cas mirror``: export a store (or any source) into a plain folder, e.g. for CVMFS."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx, remote
from casstore.cli.main import cli
from casstore.errors import MirrorIncomplete, UsageError


@command(cli, "mirror")
@click.argument("source", required=False)
@click.argument("dest", type=click.Path(path_type=Path), required=False)
@click.option("--release", "names", multiple=True, metavar="NAME",
              help="Mirror only these release names (every revision); default: all.")
@click.option("--trusted-key", "keys", multiple=True, metavar="KEY",
              help="Copy only release documents signed by one of these keys (.pub file or "
                   "hex); without it every document that parses is copied (nodes verify).")
@click.option("--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Objects fetched and copied in parallel.")
@click.option("--no-cvmfs-catalogs", "no_markers", is_flag=True,
              help="Do not write a .cvmfscatalog marker in each objects/xx/ folder.")
@click.option("--repair", is_flag=True,
              help="Trust nothing in DEST: verify every object the releases need and copy "
                   "again what is missing or damaged (slow; after --check found damage).")
@click.option("--check", "check_only", type=click.Path(path_type=Path), default=None,
              metavar="DEST", help="Only verify the mirror folder DEST (every listed release "
                                   "and every object it needs); no SOURCE.")
@pass_ctx
def mirror_cmd(ctx: Ctx, source: str | None, dest: Path | None, names: tuple[str, ...],
               keys: tuple[str, ...], jobs: int, no_markers: bool, repair: bool,
               check_only: Path | None) -> None:
    """Copy the objects, releases and release index of SOURCE into the folder DEST.

    \b
    SOURCE is a store folder or any source a client config accepts.  Incremental:
    only missing objects are copied, each verified against its id first.  Objects
    go first, then release documents, then the release index, so a reader of DEST
    never sees a release whose objects are not all there.  A killed run is resumed
    by running it again.  DEST gets no index, lock or tmp/: it can be published into
    CVMFS or served by any web server, and mounted from a read-only folder.
      cas mirror /srv/store /cvmfs/sw.example.org/casstore
      cas mirror --check /cvmfs/sw.example.org/casstore
    A tree already in DEST stands for its whole subtree (it was written after its
    children); --repair re-verifies everything after damage or manual edits.
    """
    if check_only is not None:
        if source or dest:
            raise UsageError("--check takes only the mirror folder (no SOURCE or DEST)")
        _check(ctx, check_only)
        return
    if not source or dest is None:
        raise UsageError("give SOURCE and DEST (or --check DEST)")
    from casstore.distribute.mirror import mirror
    from casstore.releases.release import parse_public
    trusted = [parse_public(k) for k in keys]
    src = remote(source)
    try:
        with ctx.progress(0, "mirror") as tick:
            try:
                rep = mirror(src, dest, names=names or None, trusted=trusted, jobs=jobs,
                             markers=not no_markers, repair=repair, tick=tick)
            except MirrorIncomplete as exc:
                if ctx.as_json:
                    ctx.emit(exc.report.to_json())  # type: ignore[attr-defined]
                for line in exc.report.problems[1:]:  # type: ignore[attr-defined]
                    click.echo(f"cas: {line}", err=True)
                raise
    finally:
        src.close()
    ctx.emit(rep.to_json(), f"copied {rep.objects_copied} objects ({rep.bytes_copied} bytes), "
                            f"{rep.objects_skipped} already there; releases: "
                            f"{rep.releases_copied} copied, {rep.releases_skipped} already there")


def _check(ctx: Ctx, dest: Path) -> None:
    from casstore.distribute.mirror import check_mirror

    with ctx.progress(0, "check") as tick:
        rep = check_mirror(dest, tick)
    ok = not rep.problems
    summary = (f"checked {rep.releases} releases, {rep.checked} objects: "
               + ("OK" if ok else f"{len(rep.problems)} problem(s)"))
    ctx.emit({"releases": rep.releases, "checked": rep.checked, "problems": rep.problems,
              "notes": rep.notes, "ok": ok}, "\n".join([*rep.problems, *rep.notes, summary]))
    sys.exit(0 if ok else 1)
