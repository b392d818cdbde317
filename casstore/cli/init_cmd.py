"""``cas init``: create an empty store (``cas put`` also creates one on first use)."""

from __future__ import annotations

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli


@command(cli, "init")
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create an empty store at --store (or $CAS_STORE)."""
    store = ctx.open_store(create=True)
    ctx.emit({"store": str(store.root)}, f"store ready at {store.root}")
