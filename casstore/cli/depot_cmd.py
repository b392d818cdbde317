"""``cas depot``: build a Julia depot with per-CPU sysimages and publish it as a release."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import JobError, UsageError
from casstore.releases.release import DAY, load_secret
from casstore.store.snapshot import put_paths, total_size


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
    variants = meta.get("variants", {})
    targets = {k: v.get("cpu_target") for k, v in variants.items()}
    out = {"julia_version": meta.get("julia_version"), "environment": meta.get("environment"),
           "variant_targets": targets,
           "packages": [p["name"] for p in meta.get("packages", [])],
           "input_key": meta.get("input_key")}
    crashed = {k: v["trace"]["note"] for k, v in variants.items()
               if v.get("trace", {}).get("ok") is False}
    if crashed:  # operators must see that an image was built without a full trace
        out["trace_crashed"] = crashed
    return out


def _publish(store, name: str, key: Path, root: str, overlays: dict[str, str], res,
             expires_days: float) -> dict:
    """Sign a new revision, unless our newest one already names these exact trees."""
    from casstore.store.publish import latest_own, publish

    sk = load_secret(key)
    last = latest_own(store, name, sk)
    if last is not None and (last.root, last.variants, last.baseline) == \
            (root, overlays, res.baseline) and last.expires > time.time() + DAY:
        return {"name": name, "revision": last.revision, "unchanged": True}
    rel = publish(store, sk, name, root, overlays, res.baseline, _release_meta(res.meta),
                  expires_days)
    return {"name": name, "revision": rel.revision, "unchanged": False}


@command(depot, "build")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Staging folder (default: ./build/<spec name>).")
@click.option("--release", "release_name", default=None,
              help="Publish a signed release of this name (needs --key).")
@click.option("--key", type=click.Path(path_type=Path), default=None, help="Secret key file.")
@click.option("--expires-days", default=90.0, show_default=True, type=float)
@click.option("--trusted-key", "trusted_keys", multiple=True,
              help="Public key of a registry release the spec takes packages from "
                   "([sources] store; --key's own public key is trusted too).")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=None,
              help="Variant sysimages built at once (default: one per core, as many as "
                   "memory holds at 2.5 GB each).")
@click.option("--variant", "only", multiple=True, metavar="LEVEL",
              help="Build only this variant (repeatable); with --release, sign a part "
                   "release NAME.part-LEVEL for `cas depot compose` instead of NAME.")
@click.option("--push", "push_url", default=None, metavar="URL",
              help="Push the signed release to the `cas serve` at URL (token from "
                   "--token-file or $CAS_TOKEN).")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the write token for --push.")
@pass_ctx
def build(ctx: Ctx, spec: Path, out: Path | None, release_name: str | None, key: Path | None,
          expires_days: float, trusted_keys: tuple[str, ...], jobs: int | None,
          only: tuple[str, ...], push_url: str | None, token_file: Path | None) -> None:
    """Build the depot described by SPEC (TOML), store it, and optionally release it.

    \b
    Stages (each logged with its wall time): stage the Julia runtime and package
    sources as they must appear at /depot, write Project/Manifest with no network,
    then per CPU variant build a sysimage and its compiled caches (cached by
    input hash in $CAS_BUILD_CACHE), validate them by running Julia against the
    staged depot at /depot in a private mount namespace, then `cas put` the
    common tree and one overlay per variant and sign a release listing them.
    """
    from casstore.julia.builder import build_depot
    from casstore.releases.release import parse_public

    if release_name and not key:
        raise UsageError("--release needs --key to sign it")
    if push_url and not release_name:
        raise UsageError("--push needs --release: a release is what is pushed")
    token = _push_token(push_url, token_file)
    out = out or Path("build") / spec.stem
    log = _log(ctx.quiet or ctx.as_json)
    store = ctx.open_store()
    trusted = [parse_public(k) for k in trusted_keys]
    if key:
        trusted.append(load_secret(key).verify_key.encode().hex())
    res = build_depot(spec, out, log, store, trusted, jobs=jobs, only=list(only) or None)
    t0 = time.monotonic()
    root = _put(ctx, store, res.root, "root")
    overlays = {lvl: _put(ctx, store, path, lvl) for lvl, path in res.variants.items()}
    log(f"[put] {time.monotonic() - t0:.1f}s root {root}")
    summary = {"root": root, "variants": overlays, "baseline": res.baseline,
               "timings": res.meta.get("timings"), "staging": str(out)}
    if release_name and key and only:
        summary["parts"] = _publish_parts(store, release_name, key, root, overlays, res,
                                          expires_days, log)
        names = [p["name"] for p in summary["parts"]]
    elif release_name and key:
        summary["release"] = _publish(store, release_name, key, root, overlays, res,
                                      expires_days)
        log(f"[release] {release_name} revision {summary['release']['revision']}"
            + (" (unchanged)" if summary["release"]["unchanged"] else ""))
        from casstore.julia.record import record_release  # lists: record, publish N+1

        summary["prefetch"] = record_release(store, ctx.store_path, release_name, key, out,
                                             expires_days, log)
        names = [release_name]
    if push_url:
        summary["pushed"] = [_push(store, push_url, n, token, log) for n in names]
    if ctx.as_json:
        ctx.emit(summary)
    else:
        json.dump(summary, sys.stdout, indent=1)
        click.echo()


def _push_token(url: str | None, token_file: Path | None) -> str:
    """The write token for --push, read before the build so a missing one fails fast."""
    from casstore.cli.push_cmd import _check_url, _read_token

    if url is None:
        return ""
    _check_url(url)
    token = _read_token(token_file)
    if not token:
        raise UsageError("--push needs a token: --token-file FILE or $CAS_TOKEN")
    return token


def _push(store, url: str, name: str, token: str, log) -> dict:
    """Push the newest revision of `name` with its objects (only what the server lacks)."""
    from casstore.distribute.transfer import push

    stats = push(store, url, name, None, token)
    log(f"[push] {name}@{stats.revision}: {stats.moved} of {stats.objects} objects sent")
    return {"name": name, "revision": stats.revision, "moved": stats.moved,
            "objects": stats.objects, "release_written": stats.release_written}


def _publish_parts(store, release: str, key: Path, root: str, overlays: dict[str, str], res,
                   expires_days: float, log) -> list[dict]:
    """One signed part release per built level, for `cas depot compose` to join."""
    from casstore.julia.compose import part_meta, part_name
    from casstore.store.publish import latest_own, publish

    sk = load_secret(key)
    out = []
    for level, overlay in overlays.items():
        name, meta = part_name(release, level), part_meta(res.meta, release, level)
        last = latest_own(store, name, sk)
        if last is not None and (last.root, last.variants, last.meta) == \
                (root, {level: overlay}, meta) and last.expires > time.time() + DAY:
            out.append({"name": name, "revision": last.revision, "unchanged": True})
        else:
            rel = publish(store, sk, name, root, {level: overlay}, level, meta, expires_days)
            out.append({"name": name, "revision": rel.revision, "unchanged": False})
        log(f"[part] {name} revision {out[-1]['revision']}"
            + (" (unchanged)" if out[-1]["unchanged"] else ""))
    return out


@command(depot, "compose")
@click.argument("release_name", metavar="NAME")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Secret key that signs the composed release.")
@click.option("--builder-key", "builder_keys", multiple=True, required=True,
              help="Public key (or .pub file) a builder signs its part with (repeatable).")
@click.option("--expires-days", default=90.0, show_default=True, type=float)
@click.option("--push", "push_url", default=None, metavar="URL",
              help="Push the composed release to the `cas serve` at URL.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the write token for --push (default: $CAS_TOKEN).")
@pass_ctx
def compose_cmd(ctx: Ctx, release_name: str, key: Path, builder_keys: tuple[str, ...],
                expires_days: float, push_url: str | None, token_file: Path | None) -> None:
    """Sign release NAME from the part releases NAME.part-LEVEL that builders of single
    levels pushed (`cas depot build SPEC --variant LEVEL --release NAME --push URL`).

    \b
    Run it on the store the parts arrived in (the `cas serve` store, or one that
    pulled them).  Every level of the spec must have a part signed by a builder key,
    all built from the same input key with the same common tree; otherwise nothing
    is signed and the error names each missing or different part.
    """
    from casstore.julia.compose import compose
    from casstore.releases.release import parse_public
    from casstore.store.publish import latest_own, publish

    token = _push_token(push_url, token_file)
    keys = [parse_public(k) for k in builder_keys]
    sk = load_secret(key)
    store = ctx.open_store()
    try:
        c = compose(store, release_name, keys)
        last = latest_own(store, release_name, sk)
        if last is not None and (last.root, last.variants, last.baseline) == \
                (c.root, c.variants, c.baseline) and last.expires > time.time() + DAY:
            summary = {"name": release_name, "revision": last.revision, "unchanged": True}
        else:
            rel = publish(store, sk, release_name, c.root, c.variants, c.baseline, c.meta,
                          expires_days)
            summary = {"name": release_name, "revision": rel.revision, "unchanged": False}
        summary.update(root=c.root, variants=c.variants, baseline=c.baseline,
                       composed_from=c.meta["composed_from"])
        if push_url:
            summary["pushed"] = _push(store, push_url, release_name, token, lambda _m: None)
    finally:
        store.close()
    ctx.emit(summary, f"{release_name} revision {summary['revision']}"
                      f"{' (unchanged)' if summary['unchanged'] else ''}: "
                      f"{', '.join(sorted(c.variants))} from "
                      f"{', '.join(summary['composed_from'].values())}")


def _view(build_dir: Path, level: str, dest: Path) -> Path:
    """The staging depot as a node of ``level`` sees it: root merged with the overlay."""
    from casstore.julia.filetree import link_tree

    link_tree(build_dir / "root", dest)
    link_tree(build_dir / "variants" / level, dest)
    return dest


def _mounted_level(ctx: Ctx, release: str, config: Path | None, arch: str | None) -> str:
    """The variant `cas mount` would choose: the same selection as mount and exec."""
    from casstore.client.config import load
    from casstore.client.selection import select

    return select(release, load(config), ctx.store_path, arch).level or ""


def _spec_job(build_dir: Path) -> tuple[list[str], list[str]]:
    """The spec's [job] as recorded in BUILD_DIR/meta.json: (command, setup) argv lists,
    scripts as seen at /depot."""
    try:
        job = json.loads((build_dir / "meta.json").read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{build_dir} holds no readable meta.json; is it a "
                         "`cas depot build --out` folder?") from None
    if job is None:
        raise UsageError("no job to run: give one after -- (cas depot abcheck BUILD_DIR "
                         "RELEASE -- JOB.jl ARGS...) or set [job] in the depot spec")
    argvs = [job.get(k) if isinstance(job, dict) else None for k in ("command", "setup")]
    for argv in argvs:
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"{build_dir}/meta.json: job is malformed; rebuild the depot")
    return [[f"/depot/{a[0]}", *a[1:]] if a else [] for a in argvs]


@command(depot, "abcheck", context_settings={"ignore_unknown_options": True})
@click.argument("build_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("release")
@click.argument("job", nargs=-1, type=click.UNPROCESSED)
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="Client config TOML (as for cas mount).")
@click.option("--arch", default=None, metavar="LEVEL", help="Force a CPU level on both sides.")
@pass_ctx
def abcheck(ctx: Ctx, build_dir: Path, release: str, job: tuple[str, ...],
            config: Path | None, arch: str | None) -> None:
    """Run a job from the local staging depot (BUILD_DIR, bound at /depot) and from
    the mounted RELEASE, and compare: output checksum (a `CHECKSUM <hex>` line),
    loaded modules with build ids, and a digest of the compiled method instances.
    Exits 1 on any difference.

    \b
    The job is any Julia command line after `--`, run from the current folder:
        cas depot abcheck BUILD demo -- /depot/jobs/myjob.jl in.dat
    Without one, the spec's [job] runs (its setup first) in a fresh temporary folder.
    """
    import tempfile

    from casstore.julia import compare, run_job

    command_argv, setup = (list(job), []) if job else _spec_job(build_dir)
    level = _mounted_level(ctx, release, config, arch)
    store_args = ["--store", str(ctx.store_path)]
    wrapper = [sys.executable, "-m", "casstore", *store_args, "-q", "exec", release,
               *(["--config", str(config)] if config else []), "--arch", level, "--"]
    julia = "/depot/julia/bin/julia"
    with tempfile.TemporaryDirectory(prefix="cas-ab-") as tmp:
        t = Path(tmp)
        for sub in ("scratch-a", "scratch-b", "work"):
            (t / sub).mkdir()
        cwd = None if job else t / "work"  # the spec's relative file names land here
        view = _view(build_dir, level, t / "view")
        if setup:
            prep = run_job(julia, f"{t}/scratch-a:/depot", setup, tree=view, cwd=cwd,
                           debug_loading=False)
            if prep.returncode != 0:
                raise JobError(f"job setup {' '.join(setup)} failed ({prep.returncode}): "
                               f"{_last_line(prep.stderr)}")

        def pair() -> tuple:
            a = run_job(julia, f"{t}/scratch-a:/depot", command_argv, tree=view,
                        probe=True, cwd=cwd)
            b = run_job(julia, f"{t}/scratch-b:/depot", command_argv, wrapper=wrapper,
                        probe=True, cwd=cwd)
            return a, b, compare(a, b)

        a, b, diffs = pair()
        retried = None
        if diffs and all(d.startswith("compiled methods ") for d in diffs):
            # Seen on a busy machine: the mounted run compiled one method more, once.
            # A real difference (another image, a rejected cache) persists: run the
            # pair again and judge by the second one, saying so in the report.
            retried = diffs
            a, b, diffs = pair()
    for label, r in (("local", a), ("mounted", b)):
        if r.returncode != 0:
            diffs.append(f"{label} run failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    report = {"variant": level, "identical": not diffs, "differences": diffs,
              "first_pair_differences": retried,
              "job": command_argv, "setup": setup,
              "local": {"checksum": a.checksum, "wall_s": a.wall_time, "modules":
                        len(a.loaded_modules), "methods": a.mi_count, "digest": a.mi_digest},
              "mounted": {"checksum": b.checksum, "wall_s": b.wall_time, "modules":
                          len(b.loaded_modules), "methods": b.mi_count, "digest": b.mi_digest}}
    text = (f"variant {level}: local {a.checksum} ({a.mi_count} methods, {a.mi_digest}) "
            f"vs mounted {b.checksum} ({b.mi_count} methods, {b.mi_digest})\n"
            + ("\n".join(diffs) if diffs else "A/B identical")
            + (f"\n(second pair; the first differed: {'; '.join(retried)})" if retried else ""))
    ctx.emit(report, text)
    sys.exit(1 if diffs else 0)


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith("ERROR:")), lines[-1] if lines else "")
