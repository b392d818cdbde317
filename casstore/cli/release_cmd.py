"""``cas release``: create, list, show, verify and roll back signed releases."""

from __future__ import annotations

import time
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.resolve import resolve
from casstore.errors import NotFound, UsageError
from casstore.objects import ObjType
from casstore.releases import (
    Release,
    SeenRevisions,
    load_secret,
    load_verified,
    parse_public,
    sign,
    unverified,
)
from casstore.restore import object_type
from casstore.store import Store

DAY = 86400


@cli.group("release")
def release() -> None:
    """Signed releases: a name, an ever-increasing revision, a root tree, variants."""


def _next_revision(store: Store, name: str) -> int:
    try:
        revs = store.release_revisions(name)
    except NotFound:
        return 1
    return (revs[-1] + 1) if revs else 1


def _publish(ctx: Ctx, store: Store, rel: Release, key: Path) -> None:
    doc = sign(rel, load_secret(key))
    path = store.write_release(rel.name, rel.revision, doc)
    ctx.emit({"name": rel.name, "revision": rel.revision, "root": rel.root,
              "variants": rel.variants, "path": str(path)},
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
    store = ctx.open_store()
    root = resolve(store, tree)
    if object_type(store, root) != ObjType.TREE:
        raise UsageError(f"{tree} is not a tree")
    var = {lvl: str(resolve(store, t)) for lvl, t in _parse_kv(variants, "--variant").items()}
    now = int(time.time())
    rel = Release(name, _next_revision(store, name), str(root), now,
                  now + int(expires_days * DAY), var, baseline if var else None,
                  _parse_kv(meta, "--meta"))
    _publish(ctx, store, rel, key)


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
    store = ctx.open_store()
    old = unverified(store.read_release(name, to_rev))
    now = int(time.time())
    meta = dict(old.meta, rolled_back_to=to_rev)
    rel = Release(name, _next_revision(store, name), old.root, now,
                  now + int(expires_days * DAY), old.variants, old.baseline, meta)
    _publish(ctx, store, rel, key)


@command(release, "list")
@click.argument("name", required=False)
@pass_ctx
def list_(ctx: Ctx, name: str | None) -> None:
    """List releases and their revisions (signatures are not checked here)."""
    source = ctx.source()
    rows = []
    for n in [name] if name else source.release_names():
        for rev in source.release_revisions(n):
            rel = unverified(source.read_release(n, rev))
            rows.append({"name": n, "revision": rev, "root": rel.root, "created": rel.created,
                         "expires": rel.expires, "variants": sorted(rel.variants)})
    lines = [f"{r['name']}@{r['revision']}  {r['root']}  "
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(r['created']))}"
             + (f"  variants: {','.join(r['variants'])}" if r["variants"] else "") for r in rows]
    ctx.emit(rows, "\n".join(lines) if lines else "no releases")


@command(release, "show")
@click.argument("spec")
@click.option("--trusted-key", "keys", multiple=True,
              help="Verify against this public key (hex, 'casstore-ed25519 HEX' or .pub file).")
@pass_ctx
def show(ctx: Ctx, spec: str, keys: tuple[str, ...]) -> None:
    """Show release NAME[@REV]; with --trusted-key, verify it too (exit non-zero if bad)."""
    source = ctx.source()
    name, _, rev = spec.partition("@")
    revision = int(rev) if rev.isdigit() else None
    if keys:
        rel = load_verified(source, name, [parse_public(k) for k in keys], None, revision)
    else:
        revision = revision or source.release_revisions(name)[-1]
        rel = unverified(source.read_release(name, revision))
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
    source = ctx.source()
    name, _, rev = spec.partition("@")
    rel = load_verified(source, name, [parse_public(k) for k in keys],
                        SeenRevisions(seen) if seen else None, int(rev) if rev.isdigit() else None)
    ctx.emit({"name": rel.name, "revision": rel.revision, "ok": True},
             f"{rel.name} revision {rel.revision}: OK")
