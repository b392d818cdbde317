"""``cas get``: materialise a stored file or tree."""

from __future__ import annotations

from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.resolve import resolve_spec
from casstore.store.restore import restore


@command(cli, "get")
@click.argument("spec")
@click.argument("dest", type=click.Path(path_type=Path))
@pass_ctx
def get(ctx: Ctx, spec: str, dest: Path) -> None:
    """Write ID[/path] (an id, ref or release) to DEST with exact modes and mtimes.

    DEST must not exist.  Every chunk is verified before it is written; a corrupt
    object stops the restore with an error and leaves no wrong bytes behind.
    """
    source = ctx.source()
    oid, sub = resolve_spec(source, spec)
    with ctx.progress(0, "get") as tick:
        restore(source, oid, dest, sub, tick)
    if ctx.as_json:
        ctx.emit({"id": str(oid), "dest": str(dest)})
