"""``cas init``: create an empty store; the only command that creates one (a mistyped
``--store`` given to any other command is an error, not a new store)."""

from __future__ import annotations

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli


@command(cli, "init")
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create an empty store at --store (or $CAS_STORE)."""
    store = ctx.open_store(create=True)
    ctx.emit({"store": str(store.root)}, f"store ready at {store.root}")
