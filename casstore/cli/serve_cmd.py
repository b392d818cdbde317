"""``cas serve``: serve a store over HTTP (today: Julia's Pkg server protocol)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.config import parse_size
from casstore.errors import ServeError, StoreError

_LISTEN_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; port 0 asks the kernel for a free one."""
    m = _LISTEN_RE.match(text)
    if not m or int(m.group(2)) > 65535:
        raise ServeError(f"--listen must be HOST:PORT, got {text!r}")
    return m.group(1).strip("[]"), int(m.group(2))


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "casstore" / "serve"


@command(cli, "serve")
@click.argument("store", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT.")
@click.option("--trusted-key", "keys", multiple=True,
              help="Public key whose registry releases are served (repeatable; required).")
@click.option("--registry", "registries", multiple=True,
              help="Serve only this release (e.g. registry-General); default: every "
                   "registry-* release.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Tarball cache folder (default: ~/.cache/casstore/serve).")
@click.option("--cache-size", default="2G", show_default=True, help="Bound of the cache.")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@pass_ctx
def serve(ctx: Ctx, store: Path | None, listen: str, keys: tuple[str, ...],
          registries: tuple[str, ...], cache_dir: Path | None, cache_size: str,
          access_log: bool) -> None:
    """Serve the store's signed Julia registries with Julia's Pkg server protocol.

    Point Julia at it with JULIA_PKG_SERVER=http://HOST:PORT.  See docs/HTTP.md.
    """
    from casstore.names import check_ref_name
    from casstore.releases import parse_public
    from server.pkgproto import PkgConfig

    host, port = parse_listen(listen)
    root = (store or ctx.store_path).resolve()
    if not (root / "objects").is_dir():
        raise StoreError(f"no store at {root}")
    if not keys:
        raise ServeError("--trusted-key is needed: only registry releases signed by a "
                         "trusted key are served")
    cfg = PkgConfig(root, [parse_public(k) for k in keys], cache_dir or _default_cache(),
                    parse_size(cache_size),
                    [check_ref_name(r) for r in registries] or None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="cas serve: %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if access_log else logging.WARNING)
    try:
        asyncio.run(_run(cfg, host, port, access_log))
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


async def _run(cfg, host: str, port: int, access_log: bool) -> None:
    from aiohttp import web

    from server.app import make_app

    runner = web.AppRunner(make_app(cfg), access_log=logging.getLogger("aiohttp.access")
                           if access_log else None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        real_host, real_port = sock.getsockname()[:2]
        shown = f"[{real_host}]" if ":" in real_host else real_host
        click.echo(f"cas serve: listening on http://{shown}:{real_port}")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
