"""``cas gc``: delete objects no ref or release reaches."""

from __future__ import annotations

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.store.gc import gc


@command(cli, "gc")
@click.option("--grace", default="24h", show_default=True,
              help="Keep unreferenced objects younger than this (s, m, h or d suffix).")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--force", is_flag=True,
              help="Sweep even if marking found missing or corrupt objects (loses data "
                   "below them).")
@pass_ctx
def gc_cmd(ctx: Ctx, grace: str, dry_run: bool, force: bool) -> None:
    """Mark from refs and all releases, then sweep unreachable objects and temp files.

    Objects younger than --grace survive, so a put that has not been referenced
    yet (or one running right now) loses nothing.
    """
    from casstore.distribute.mirror import refuse_mirror

    seconds = _seconds(grace)
    refuse_mirror(ctx.store_path, "cas gc")  # a mirror is written only by `cas mirror`
    store = ctx.open_store()
    rep = gc(store, seconds, dry_run, force)
    verb = "would delete" if dry_run else "deleted"
    ctx.emit(vars(rep), "\n".join(rep.problems + [
        f"{verb} {rep.deleted} objects ({rep.deleted_bytes} bytes), kept {rep.kept_young} "
        f"young, {rep.live} live, {rep.tmp_removed} temp files"]))


def _seconds(text: str) -> float:
    """A duration; NaN, infinity and negative values are refused (they would sweep a
    fresh put, or never expire anything by accident)."""
    from casstore.errors import UsageError
    from casstore.store.gc import check_grace

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise UsageError(f"bad duration {text!r} (use e.g. 30m, 24h, 7d)") from None
    try:
        return check_grace(value)
    except UsageError:
        raise UsageError(f"bad duration {text!r}: it must be finite and not negative "
                         "(use e.g. 0, 30m, 24h, 7d)") from None
