"""``cas push URL NAME[@REV]`` and ``cas pull URL NAME[@REV]``: move a release and only
the objects the other side lacks (the model is :mod:`casstore.distribute.transfer`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import TokenError, UsageError

TOKEN_ENV = "CAS_TOKEN"


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"URL must start with http:// or https://, got {url!r}")
    return url


def _read_token(token_file: Path | None) -> str:
    """The token from --token-file, else $CAS_TOKEN (never from the command line, which
    other users can read in the process list)."""
    if token_file is not None:
        try:
            data = token_file.read_bytes()[:4096]
        except OSError as exc:
            raise TokenError(f"cannot read {token_file}: {exc.strerror}") from None
        return data.decode("utf-8", "replace").strip()
    return os.environ.get(TOKEN_ENV, "").strip()


def _report(ctx: Ctx, verb: str, stats) -> None:
    data = {"name": stats.name, "revision": stats.revision, "objects": stats.objects,
            "moved": stats.moved, "bytes": stats.bytes,
            "release_written": stats.release_written}
    what = "sent" if verb == "push" else "fetched"
    ctx.emit(data, f"{verb} {stats.name}@{stats.revision}: {stats.moved} of {stats.objects} "
                   f"objects {what} ({stats.bytes} bytes); release "
                   f"{'written' if stats.release_written else 'was already there'}")


_jobs = click.option("--jobs", "-j", default=None, type=click.IntRange(1, 64),
                     help="Parallel transfers (default: http_parallel of the client config, "
                          "16).  Proxies and timeouts come from the client config too.")


@command(cli, "push")
@click.argument("url")
@click.argument("spec")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=f"File holding the write token (default: ${TOKEN_ENV}).")
@_jobs
@pass_ctx
def push(ctx: Ctx, url: str, spec: str, token_file: Path | None, jobs: int | None) -> None:
    """Push release SPEC (NAME or NAME@REV) to the `cas serve` at URL."""
    from casstore.client import connect
    from casstore.client.config import load
    from casstore.distribute.transfer import push as do_push
    from casstore.releases.release import parse_spec

    name, rev = parse_spec(spec)
    url = _check_url(url)
    token = _read_token(token_file)
    settings = connect.http_settings(load(None), parallel=jobs)
    store = ctx.open_store()
    try:
        with ctx.progress(None, f"push {name}") as bar:
            stats = do_push(store, url, name, rev, token, settings=settings, progress=bar)
    finally:
        store.close()
    _report(ctx, "push", stats)


@command(cli, "pull")
@click.argument("url")
@click.argument("spec")
@click.option("--trusted-key", "keys", multiple=True,
              help="Public key to verify the release (repeatable; default: the client "
                   "config's trusted_keys).")
@_jobs
@pass_ctx
def pull(ctx: Ctx, url: str, spec: str, keys: tuple[str, ...], jobs: int | None) -> None:
    """Pull release SPEC (NAME or NAME@REV) from URL into the store, verified."""
    from casstore.client import connect
    from casstore.client.config import load
    from casstore.distribute.transfer import pull as do_pull
    from casstore.releases.release import parse_public, parse_spec

    name, rev = parse_spec(spec)
    url = _check_url(url)
    cfg = load(None)
    trusted = [parse_public(k) for k in keys] if keys else cfg.trusted()
    settings = connect.http_settings(cfg, parallel=jobs)
    store = ctx.open_store()
    try:
        with ctx.progress(None, f"pull {name}") as bar:
            stats = do_pull(store, url, name, rev, trusted, settings=settings, progress=bar)
    finally:
        store.close()
    _report(ctx, "pull", stats)
