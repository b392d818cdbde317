"""``cas depot``: build a Julia depot with per-CPU sysimages and publish it as a release."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import JuliaError
from casstore.releases import Release, load_secret, sign
from casstore.snapshot import put_paths, total_size

DAY = 86400


@cli.group("depot")
def depot() -> None:
    """Julia depots: build offline, with one sysimage per CPU level, and publish."""


def _log(quiet: bool):
    start = time.monotonic()

    def log(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.monotonic() - start:7.1f}s] {msg}", err=True)

    return log


def _put(ctx: Ctx, store, path: Path, label: str) -> str:
    with ctx.progress(total_size([path]), f"put {label}") as tick:
        return str(put_paths(store, [path], tick))


def _release_meta(meta: dict) -> dict:
    """What nodes and operators need to know, from the builder's meta.json."""
    targets = {k: v.get("cpu_target") for k, v in meta.get("variants", {}).items()}
    return {"julia_version": meta.get("julia_version"), "environment": meta.get("environment"),
            "variant_targets": targets,
            "packages": [p["name"] for p in meta.get("packages", [])],
            "input_key": meta.get("input_key")}


@command(depot, "build")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Staging folder (default: ./build/<spec name>).")
@click.option("--release", "release_name", default=None,
              help="Publish a signed release of this name (needs --key).")
@click.option("--key", type=click.Path(path_type=Path), default=None, help="Secret key file.")
@click.option("--expires-days", default=90.0, show_default=True, type=float)
@pass_ctx
def build(ctx: Ctx, spec: Path, out: Path | None, release_name: str | None, key: Path | None,
          expires_days: float) -> None:
    """Build the depot described by SPEC (TOML), store it, and optionally release it.

    \b
    Stages (each logged with its wall time): stage the Julia runtime and package
    sources as they must appear at /depot, write Project/Manifest with no network,
    then per CPU variant build a sysimage and its compiled caches (cached by
    input hash in $CAS_BUILD_CACHE), validate them by running Julia against the
    staged depot at /depot in a private mount namespace, then `cas put` the
    common tree and one overlay per variant and sign a release listing them.
    """
    from casstore.julia.builder import BuildError, build_depot

    if release_name and not key:
        raise JuliaError("--release needs --key to sign it")
    out = out or Path("build") / spec.stem
    log = _log(ctx.quiet or ctx.as_json)
    try:
        res = build_depot(spec, out, log)
    except BuildError as exc:
        raise JuliaError(str(exc)) from None
    store = ctx.open_store(create=True)
    t0 = time.monotonic()
    root = _put(ctx, store, res.root, "root")
    overlays = {lvl: _put(ctx, store, path, lvl) for lvl, path in res.variants.items()}
    log(f"[put] {time.monotonic() - t0:.1f}s root {root}")
    summary = {"root": root, "variants": overlays, "baseline": res.baseline,
               "timings": res.meta.get("timings"), "staging": str(out)}
    if release_name and key:
        now = int(time.time())
        revs = store.release_revisions(release_name) if release_name in \
            store.release_names() else []
        rel = Release(release_name, (revs[-1] + 1) if revs else 1, root, now,
                      now + int(expires_days * DAY), overlays, res.baseline,
                      _release_meta(res.meta))
        store.write_release(rel.name, rel.revision, sign(rel, load_secret(key)))
        summary["release"] = {"name": rel.name, "revision": rel.revision}
    if ctx.as_json:
        ctx.emit(summary)
    else:
        json.dump(summary, sys.stdout, indent=1)
        click.echo()
