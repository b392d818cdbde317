"""``cas serve``: serve a store over HTTP (the store layout, push, Julia's Pkg protocol),
and ``cas serve token add|list|revoke`` for the write tokens."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.client.config import parse_size
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


class _ServeGroup(click.Group):
    """``cas serve STORE ...`` runs the server; ``cas serve token ...`` manages tokens.

    Anything that does not start with a subcommand name goes to the hidden ``run``
    command, so the server keeps its short command line.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands or args[0] == "run":
            if not (args and args[0] in ("-h", "--help")):
                args = ["run", *args]
        return super().parse_args(ctx, args)


@cli.group("serve", cls=_ServeGroup)
def serve() -> None:
    """Serve a store over HTTP: its layout (for `cas pull` and HTTP mounts), push
    writes with tokens, and signed Julia registries with Julia's Pkg protocol.

    `cas serve STORE --listen HOST:PORT [options]` runs the server (see
    `cas serve run --help`); `cas serve token add|list|revoke` manages write tokens.
    See docs/HTTP.md.
    """


@command(serve, "run", hidden=True)
@click.argument("store", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT.")
@click.option("--trusted-key", "keys", multiple=True,
              help="Public key (repeatable): releases signed by it may be pushed, and its "
                   "registry releases are served to Julia.  Without one the store is "
                   "served read-only (objects may still be pushed) and Pkg is off.")
@click.option("--registry", "registries", multiple=True,
              help="Serve only this release to Julia (e.g. registry-General); default: "
                   "every registry-* release.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Tarball cache folder (default: ~/.cache/casstore/serve).")
@click.option("--cache-size", default="2G", show_default=True, help="Bound of the cache.")
@click.option("--max-age", default=60, show_default=True, type=click.IntRange(0, 86400),
              help="Cache-Control max-age (s) of release documents and refs (release "
                   "index files are always no-cache, so proxies revalidate them).")
@click.option("--tokens", "tokens", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Token file (default: STORE/server/tokens.json).")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Processes accepting on the same socket (like nginx's worker_processes; "
                   "default: the number of cores).")
@click.option("--max-client-connections", "per_client", default=256, show_default=True,
              type=click.IntRange(1, 1 << 20),
              help="Open connections one client address may hold (per worker); more are "
                   "closed at once.")
@click.option("--idle-timeout", default=15.0, show_default=True,
              type=click.FloatRange(0.5, 3600),
              help="Seconds a connection may stay idle, or take to send a request's headers.")
@pass_ctx
def run(ctx: Ctx, store: Path | None, listen: str, keys: tuple[str, ...],
        registries: tuple[str, ...], cache_dir: Path | None, cache_size: str, max_age: int,
        tokens: Path | None, access_log: bool, workers: int | None, per_client: int,
        idle_timeout: float) -> None:
    """Serve STORE (see `cas serve --help` and docs/HTTP.md)."""
    from casstore.server import workers as wk

    workers = workers or wk.default_workers()
    metrics_dir = wk.prepare_multiprocess(workers)  # before prometheus_client is imported
    from casstore.format.names import check_ref_name
    from casstore.releases.release import parse_public
    from casstore.server.pkgproto import PkgConfig
    from casstore.server.storeproto import StoreConfig

    host, port = parse_listen(listen)
    root = (store or ctx.store_path).resolve()
    if not (root / "objects").is_dir():
        raise StoreError(f"no store at {root}")
    if registries and not keys:
        raise ServeError("--registry needs --trusted-key: only registry releases signed by "
                         "a trusted key are served")
    trusted = [parse_public(k) for k in keys]
    pkg = None
    if trusted:
        pkg = PkgConfig(root, trusted, cache_dir or _default_cache(), parse_size(cache_size),
                        [check_ref_name(r) for r in registries] or None)
    scfg = StoreConfig(root, trusted, tokens, max_age=max_age)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="cas serve: %(levelname)s %(message)s")
    if not trusted:
        logging.getLogger("casstore.server").info("no --trusted-key: release uploads and the Pkg "
                                            "protocol are off")
    try:
        sock = wk.bind(host, port)
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from None

    def make_app():
        from casstore.server.app import make_app as make

        return make(pkg, scfg)

    def ready() -> None:
        click.echo(f"cas serve: listening on {wk.address(sock)}")
        sys.stdout.flush()

    limits = wk.Limits(per_client=per_client, idle_timeout=idle_timeout)
    if not wk.serve(make_app, sock, workers, access_log, _loop_factory(), ready, metrics_dir,
                    limits):
        raise ServeError("worker processes kept dying at start; the server stopped")


def _loop_factory():
    """uvloop when installed (about twice the requests per CPU second), else asyncio's."""
    if os.environ.get("CAS_SERVE_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- tokens ------------------------------------------------------------------------------
@serve.group("token")
def token() -> None:
    """Write tokens of a served store (kept hashed in STORE/server/tokens.json)."""


def _token_file(ctx: Ctx, tokens: Path | None):
    from casstore.server.tokens import TokenFile, default_path

    if tokens is None and not (ctx.store_path / "objects").is_dir():
        raise StoreError(f"no store at {ctx.store_path} (use --store or --tokens)")
    return TokenFile(tokens or default_path(ctx.store_path))


_tokens_opt = click.option("--tokens", "tokens", type=click.Path(path_type=Path, dir_okay=False),
                           default=None, help="Token file (default: STORE/server/tokens.json).")


@command(token, "add")
@click.argument("name")
@_tokens_opt
@pass_ctx
def token_add(ctx: Ctx, name: str, tokens: Path | None) -> None:
    """Make a token called NAME and print it (once: only its hash is kept)."""
    secret = _token_file(ctx, tokens).add(name)
    ctx.emit({"name": name, "token": secret}, secret)


@command(token, "list")
@_tokens_opt
@pass_ctx
def token_list(ctx: Ctx, tokens: Path | None) -> None:
    """List token names and when they were made (never the tokens)."""
    import time

    items = sorted(_token_file(ctx, tokens).tokens().values(), key=lambda t: t.name)
    ctx.emit([{"name": t.name, "created": t.created} for t in items],
             "\n".join(f"{t.name}\t{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t.created))}"
                       for t in items) or "(no tokens)")


@command(token, "revoke")
@click.argument("name")
@_tokens_opt
@pass_ctx
def token_revoke(ctx: Ctx, name: str, tokens: Path | None) -> None:
    """Remove token NAME; a running server refuses it from its next request on."""
    _token_file(ctx, tokens).revoke(name)
    ctx.emit({"revoked": name}, f"revoked {name}")

