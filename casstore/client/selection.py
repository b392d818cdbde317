"""Which release, which revision, verified how, which variant: decided in one place.

Every consumer of a release name goes through here: ``cas mount`` and ``cas
exec`` (via :func:`select`), ``cas get/cat/ls NAME[@N]`` (via :func:`release_for`)
and ``cas doctor``.  The order matters: the release is verified (signature,
trusted key, expiry, rollback against the seen-revisions file) and the CPU
level chosen *before* anything is mounted or served, so every refusal is a
distinct :class:`~casstore.errors.CasError` with its own exit code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from casstore.client.config import ClientConfig
from casstore.client.connect import open_client_source
from casstore.client.lastgood import load_verified_or_cached
from casstore.errors import CasError, KeyFileError, MountError, NotFound, UsageError
from casstore.releases.release import Release, SeenRevisions, load_verified, parse_spec, unverified
from casstore.releases.variants import choose
from casstore.sources import ObjectSource


@dataclass(frozen=True)
class Selection:
    """A verified release revision and the variant this node will see."""

    release: Release
    level: str | None
    how: str  # "forced", "config" or "detected"
    source: ObjectSource
    source_path: Path | str | list[str]  # a folder, or the URL(s) of an HTTP source
    offline: str = ""  # set when the servers were unreachable: the kept release is used


def choose_level(rel: Release, arch: str | None, cfg_arch: str | None) -> tuple[str | None, str]:
    """(level, how): forced on the command line, set in the config, or detected."""
    forced = arch or cfg_arch
    how = "forced" if arch else "config" if cfg_arch else "detected"
    return choose(sorted(rel.variants), rel.baseline, forced), how


def select(spec: str, cfg: ClientConfig, store: Path | None = None, arch: str | None = None,
           revision: int | None = None) -> Selection:
    """Verify release ``spec`` (``NAME`` or ``NAME@N``) and choose its variant.

    Objects come from ``store``, else the config's ``source``.  Refuses to go on
    without trusted keys: a node never serves a release it cannot verify.
    """
    name, rev = parse_spec(spec)
    if rev is not None and revision is not None and rev != revision:
        raise UsageError(f"{spec} and --revision {revision} disagree")
    revision = rev if rev is not None else revision
    src = store or cfg.source
    if src is None:
        raise MountError("no source store: give --store or set 'source' in the client config")
    src_path = _source_spec(src)
    trusted = cfg.trusted()
    if not trusted:
        raise KeyFileError("no trusted_keys in the client config; refusing to mount anything")
    # HTTP sources get the config's proxies, timeouts and the object cache.
    source = open_client_source(cfg, src_path)
    try:
        return _verify_and_choose(source, src_path, name, revision, cfg, trusted, arch)
    except NotFound as exc:
        raise NotFound(f"{exc}{did_you_mean(source, name)}") from None


def _verify_and_choose(source: ObjectSource, src_path: Path | str | list[str], name: str,
                       revision: int | None, cfg: ClientConfig, trusted: list[str],
                       arch: str | None) -> Selection:
    """The one verification path of a node: mount and every follow check come here."""
    # If every server is unreachable, the last release verified here is used (verified
    # again) when its objects are cached: casstore.client.lastgood.
    got = load_verified_or_cached(source, name, trusted, SeenRevisions(cfg.seen_path),
                                  cfg.state_dir, revision)
    rel = got.release
    level, how = choose_level(rel, arch, cfg.arch)
    return Selection(rel, level, how, source, src_path, got.note)


def reselect(sel: Selection, cfg: ClientConfig, arch: str | None = None,
             revision: int | None = None) -> Selection:
    """Verify the newest (or ``revision``) of ``sel``'s release from the same source,
    exactly as :func:`select` does at mount: signature with the trusted keys, expiry,
    not older than the highest seen revision (which it then records), variant chosen
    again.  Used by :mod:`casstore.client.follow`; raises what ``select`` raises."""
    trusted = cfg.trusted()
    if not trusted:
        raise KeyFileError("no trusted_keys in the client config; refusing to switch")
    return _verify_and_choose(sel.source, sel.source_path, sel.release.name, revision, cfg,
                              trusted, arch)


def did_you_mean(source: ObjectSource, name: str) -> str:
    """``"; did you mean 'demo'?"`` when ``name`` is not a release of ``source`` and a
    release with a close name is (else ""): a release-name typo names the fix."""
    import difflib

    try:
        names = source.release_names()
    except CasError:
        return ""
    if name in names:
        return ""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        return f" (releases here: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" \
            if names else " (this source has no releases)"
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _source_spec(src: Path | str | list[str]) -> Path | str | list[str]:
    """URLs as they are; a folder made absolute (the daemon changes directory to /)."""
    if isinstance(src, list):
        return src if len(src) != 1 else _source_spec(src[0])
    if isinstance(src, str) and "://" in src:
        return src
    return Path(src).resolve()


def release_for(source: ObjectSource, name: str, revision: int | None,
                cfg: ClientConfig | None = None) -> Release:
    """A release for browsing (``cas get/cat/ls NAME[@N]``): verified when the client
    config names trusted keys, else used as is with a warning on stderr.

    On a publishing host with no client config the document came from this very
    store; a mirror's copy deserves a check, hence the warning.  Browsing does
    not record seen revisions (only what a node mounts moves that mark).
    """
    if cfg is None:
        from casstore.client.config import load

        cfg = load(None)
    trusted = cfg.trusted()
    if trusted:
        try:
            return load_verified(source, name, trusted, None, revision)
        except NotFound as exc:
            raise NotFound(f"{exc}{did_you_mean(source, name)}") from None
    if revision is None:
        revs = source.release_revisions(name)
        if not revs:
            raise NotFound(f"release {name!r} has no revisions")
        revision = revs[-1]
    print(f"cas: warning: release {name}@{revision} used without a signature check "
          "(no trusted_keys in the client config; see 'cas release verify')", file=sys.stderr)
    return unverified(source.read_release(name, revision))
