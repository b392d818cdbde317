"""``cas put``: store files and directories, print the id."""

from __future__ import annotations

import time
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.store.snapshot import put_paths, total_size


@command(cli, "put")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("--name", "ref", default=None, help="Also point ref NAME at the result.")
@pass_ctx
def put(ctx: Ctx, paths: tuple[Path, ...], ref: str | None) -> None:
    """Store PATHS and print the resulting object id.

    One directory gives its tree id, one file its data id, several paths a new
    tree holding each by its base name.  Mode bits, symlinks and mtimes (ns)
    are kept; hard links, devices, sockets and fifos are refused.
    """
    # readable=False above: an unreadable path is put's one-line error, not click's usage.
    store = ctx.open_store()
    total = total_size(list(paths))
    start = time.perf_counter()
    with ctx.progress(total, "put") as tick:
        oid = put_paths(store, list(paths), tick, ref=ref)  # the ref is set under the lock
    secs = time.perf_counter() - start
    ctx.emit({"id": str(oid), "bytes": total, "seconds": round(secs, 3), "ref": ref}, str(oid))
