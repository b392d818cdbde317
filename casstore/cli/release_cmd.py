"""``cas release``: create, list, show, verify and roll back signed releases."""

from __future__ import annotations

import time
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.resolve import resolve
from casstore.errors import CasError, FormatError, NotFound, UsageError
from casstore.format.names import check_ref_name
from casstore.releases.release import (
    Release,
    SeenRevisions,
    expiry,
    load_secret,
    load_unverified,
    load_verified,
    parse_public,
    parse_spec,
)
from casstore.store.publish import own_release, publish


@cli.group("release")
def release() -> None:
    """Signed releases: a name, an ever-increasing revision, a root tree, variants."""


def _emit(ctx: Ctx, rel: Release) -> None:
    ctx.emit({"name": rel.name, "revision": rel.revision, "root": rel.root,
              "variants": rel.variants},
             f"{rel.name} revision {rel.revision} -> {rel.root}")


def _parse_kv(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[k] = v
    return out


@command(release, "create")
@click.argument("name")
@click.argument("tree")
@click.option("--key", required=True, type=click.Path(path_type=Path), help="Secret key file.")
@click.option("--variant", "variants", multiple=True, metavar="LEVEL=TREE",
              help="An overlay tree for one CPU level (repeatable).")
@click.option("--baseline", default="x86-64", show_default=True,
              help="Variant level every node can run.")
@click.option("--expires-days", default=90.0, show_default=True, type=float)
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Free metadata (repeatable).")
@pass_ctx
def create(ctx: Ctx, name: str, tree: str, key: Path, variants: tuple[str, ...],
           baseline: str, expires_days: float, meta: tuple[str, ...]) -> None:
    """Sign and publish a new revision of release NAME pointing at TREE."""
    expiry(0, expires_days)  # refuse nan, <= 0 or huge before touching the store
    store = ctx.open_store()
    var = {lvl: str(resolve(store, t)) for lvl, t in _parse_kv(variants, "--variant").items()}
    rel = publish(store, load_secret(key), name, str(resolve(store, tree)), var, baseline,
                  _parse_kv(meta, "--meta"), expires_days)
    _emit(ctx, rel)


@command(release, "rollback")
@click.argument("name")
@click.option("--to", "to_rev", required=True, type=int, help="Revision whose trees to restore.")
@click.option("--key", required=True, type=click.Path(path_type=Path))
@click.option("--expires-days", default=90.0, show_default=True, type=float)
@pass_ctx
def rollback(ctx: Ctx, name: str, to_rev: int, key: Path, expires_days: float) -> None:
    """Publish a NEW revision that points at an old revision's trees.

    Revisions never go back, so nodes that refuse older revisions still accept it.
    """
    expiry(0, expires_days)
    if to_rev < 1:
        raise UsageError(f"bad revision {to_rev} for --to (use N >= 1)")
    store = ctx.open_store()
    sk = load_secret(key)
    old = own_release(store, name, to_rev, sk)  # never re-sign what we cannot verify
    meta = dict(old.meta, rolled_back_to=to_rev)
    _emit(ctx, publish(store, sk, name, old.root, old.variants, old.baseline, meta,
                       expires_days))


@command(release, "list")
@click.argument("name", required=False)
@pass_ctx
def list_(ctx: Ctx, name: str | None) -> None:
    """List releases and their revisions (signatures are not checked here).

    A damaged document is listed as such and the listing goes on; the exit code
    is then non-zero.  A revision the index lists before its document arrived
    is not shown (it is not there yet).
    """
    source = ctx.source()
    rows, bad = [], 0
    for n in [check_ref_name(name)] if name else source.release_names():
        for rev in source.release_revisions(n):
            try:
                rel = load_unverified(source, n, rev)
            except NotFound:
                continue
            except CasError as exc:
                bad += 1
                rows.append({"name": n, "revision": rev, "error": str(exc)})
                continue
            rows.append({"name": n, "revision": rev, "root": rel.root, "created": rel.created,
                         "expires": rel.expires, "variants": sorted(rel.variants)})
    ctx.emit(rows, "\n".join(_list_line(r) for r in rows) if rows else "no releases")
    if bad:
        raise FormatError(f"{bad} release document(s) could not be read (listed above)")


def _list_line(r: dict) -> str:
    if "error" in r:
        return f"{r['name']}@{r['revision']}  DAMAGED: {r['error']}"
    return (f"{r['name']}@{r['revision']}  {r['root']}  "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(r['created']))}"
            + (f"  variants: {','.join(r['variants'])}" if r["variants"] else ""))


@command(release, "show")
@click.argument("spec")
@click.option("--trusted-key", "keys", multiple=True,
              help="Verify against this public key (hex, 'casstore-ed25519 HEX' or .pub file).")
@pass_ctx
def show(ctx: Ctx, spec: str, keys: tuple[str, ...]) -> None:
    """Show release NAME[@REV]; with --trusted-key, verify it too (exit non-zero if bad)."""
    name, revision = parse_spec(spec)
    source = ctx.source()
    if keys:
        rel = load_verified(source, name, [parse_public(k) for k in keys], None, revision)
    else:
        rel = load_unverified(source, name, revision)
    data = vars(rel) | {"verified": bool(keys)}
    text = "\n".join(f"{k}: {v}" for k, v in data.items())
    ctx.emit(data, text)


@command(release, "verify")
@click.argument("spec")
@click.option("--trusted-key", "keys", multiple=True, required=True)
@click.option("--seen", type=click.Path(path_type=Path), default=None,
              help="Anti-rollback state file; refuses revisions older than one seen before.")
@pass_ctx
def verify_cmd(ctx: Ctx, spec: str, keys: tuple[str, ...], seen: Path | None) -> None:
    """Verify release NAME[@REV]: signature, trusted key, expiry and rollback."""
    name, revision = parse_spec(spec)
    source = ctx.source()
    rel = load_verified(source, name, [parse_public(k) for k in keys],
                        SeenRevisions(seen) if seen else None, revision)
    ctx.emit({"name": rel.name, "revision": rel.revision, "ok": True},
             f"{rel.name} revision {rel.revision}: OK")
