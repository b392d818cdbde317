"""``cas keygen``: make an Ed25519 signing key pair for releases."""

from __future__ import annotations

from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.releases.release import PUBLIC_TAG, keygen


@command(cli, "keygen")
@click.argument("path", type=click.Path(path_type=Path))
@pass_ctx
def keygen_cmd(ctx: Ctx, path: Path) -> None:
    """Write a secret key to PATH (mode 0600) and the public key to PATH.pub.

    Give nodes the public key (in their client config's trusted_keys); keep the
    secret key on the publishing host only.
    """
    pub = keygen(path)
    ctx.emit({"secret": str(path), "public": f"{PUBLIC_TAG} {pub}"}, f"{PUBLIC_TAG} {pub}")
