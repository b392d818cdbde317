"""``cas fsck``: verify every object and every reference."""

from __future__ import annotations

import sys

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.store.fsck import fsck


@command(cli, "fsck")
@click.option("--rebuild-index", is_flag=True,
              help="Throw the LMDB index away (even a damaged one) and rebuild it from the "
                   "object files.")
@pass_ctx
def fsck_cmd(ctx: Ctx, rebuild_index: bool) -> None:
    """Check every object, every reference's type and size, refs, releases and the index.

    Lists every problem (each missing, corrupt or wrong-typed object, stray or
    garbage file, index drift) and exits 1 once at the end if anything is wrong.
    """
    from casstore.distribute.mirror import refuse_mirror

    refuse_mirror(ctx.store_path, "cas fsck")  # a mirror has no lock or index to check
    store = ctx.open_store()
    with ctx.progress(0, "fsck") as tick:
        rep = fsck(store, tick, rebuild_index)
    ok = not rep.problems
    summary = f"checked {rep.checked} objects: " + (
        "OK" if ok else f"{len(rep.problems)} problem(s)")
    if rep.index_rebuilt:
        summary += "; index rebuilt"
    text = "\n".join(rep.problems + rep.notes + [summary])
    ctx.emit({"checked": rep.checked, "problems": rep.problems, "notes": rep.notes, "ok": ok,
              "index_rebuilt": rep.index_rebuilt}, text)
    sys.exit(0 if ok else 1)
