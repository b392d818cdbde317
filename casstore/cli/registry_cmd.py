"""``cas registry``: build Julia package registries from git bundles into the store."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import UsageError
from casstore.releases.release import load_secret


@cli.group("registry")
def registry() -> None:
    """Julia registries served by `cas serve` (Julia's Pkg server protocol)."""


def _repo_urls(path: Path | None) -> dict[str, str]:
    """Package name -> repo URL from a packages.toml-like file ([[package]] name, repo)."""
    if path is None:
        return {}
    try:
        doc = tomllib.loads(path.read_text())
        return {str(p["name"]): str(p["repo"]) for p in doc.get("package", []) if "repo" in p}
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"--repo-urls {path}: {exc}") from None


@command(registry, "build")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path), help="Secret key file.")
@click.option("--name", default="General", show_default=True,
              help="Registry name; the release is registry-NAME.")
@click.option("--uuid", default=None,
              help="Registry uuid (default: General's, which Pkg 1.5 on an empty depot asks "
                   "for: a site mirror serves its registry under General's name and uuid).")
@click.option("--repo", default=None, help="The registry's repo URL (Registry.toml).")
@click.option("--from", "base", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Start a new registry from this registry folder.")
@click.option("--artifact", "artifacts", multiple=True, type=click.Path(path_type=Path),
              help="A folder to serve as an artifact, by its git tree hash (repeatable).")
@click.option("--repo-urls", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TOML with [[package]] name/repo entries (e.g. packages.toml) for "
                   "Package.toml's repo field.")
@click.option("--expires-days", default=365.0, show_default=True, type=float)
@pass_ctx
def build_cmd(ctx: Ctx, sources: tuple[Path, ...], key: Path, name: str, uuid: str | None,
              repo: str | None, base: Path | None, artifacts: tuple[Path, ...],
              repo_urls: Path | None, expires_days: float) -> None:
    """Register every version tag of SOURCES (git bundles, repositories, or folders of
    them) and publish a new revision of release registry-NAME that extends the last."""
    from casstore.pkg.build import BuildOptions, build
    from casstore.pkg.gittree import check_uuid

    if not sources and not artifacts and base is None:
        raise UsageError("nothing to add: give package sources, --artifact or --from")
    if uuid is not None:
        check_uuid(uuid)
    opts = BuildOptions(name, uuid, repo, list(sources), list(artifacts), base,
                        _repo_urls(repo_urls), expires_days)
    store = ctx.open_store()
    res = build(store, load_secret(key), opts)
    data = vars(res) | {"unchanged": res.revision is None}
    what = (f"{res.release} unchanged" if res.revision is None
            else f"{res.release} revision {res.revision}")
    ctx.emit(data, f"{what}: {res.packages} packages, {res.versions} versions, "
                   f"tree {res.tree_sha1} (+{len(res.added)} versions, "
                   f"+{len(res.artifacts_added)} artifacts)")
