"""``cas fsck``: verify every object and every reference."""

from __future__ import annotations

import sys

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.maintenance import fsck


@command(cli, "fsck")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the LMDB index from object files.")
@pass_ctx
def fsck_cmd(ctx: Ctx, rebuild_index: bool) -> None:
    """Check every object's hash and that refs and releases reach only present objects.

    Names each missing or corrupt object and exits 1 if anything is wrong.
    """
    store = ctx.open_store()
    with ctx.progress(0, "fsck") as tick:
        rep = fsck(store, tick, rebuild_index)
    ok = not rep.problems
    text = "\n".join(rep.problems + [f"checked {rep.checked} objects: "
                                     + ("OK" if ok else f"{len(rep.problems)} problem(s)")])
    ctx.emit({"checked": rep.checked, "problems": rep.problems, "ok": ok}, text)
    sys.exit(0 if ok else 1)
