"""The last release document a node verified, per name: what it mounts when offline.

A node that boots while every server is unreachable can still mount the release it
last verified, if that release's objects are in its object cache.
The document is kept as the signed bytes, in ``<state_dir>/verified/<name>.release``,
and is verified again on every use, exactly like one from a server: a tampered copy
is refused (bad signature), an expired one is refused, and one older than a
revision already seen is refused (rollback).  The fallback is taken only when the
source fails *temporarily* (:class:`~casstore.errors.RemoteError`: timeouts,
refused connections, 5xx); a server that answers "no such release" (404) or serves
an older revision is an answer, never a reason to go offline.

Use :func:`load_verified_or_cached` where a mount selects its release; its result
says whether the release came from the offline copy, for ``cas status``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from casstore.errors import BadSignature, FormatError, RemoteError, ServersUnreachable
from casstore.fileio.fsutil import atomic_write
from casstore.fileio.safeio import read_regular
from casstore.format.layout import MAX_RELEASE_DOC, RELEASE_SUFFIX
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjType
from casstore.releases.release import Release, SeenRevisions, newest, unverified, verify

FOLDER = "verified"
OFFLINE_NOTE = "offline: using the last verified release"


@dataclass
class Verified:
    """A verified release and where it came from (``offline`` -> the kept copy)."""

    release: Release
    offline: bool = False
    note: str = ""  # the line for `cas status` when offline

    def status(self) -> dict:
        """Fields for the mount's status file."""
        return {"offline": self.offline, "offline_note": self.note or None}


class LastVerified:
    """``<state_dir>/verified/<name>.release``: one signed document per release name."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / FOLDER

    def path(self, name: str) -> Path:
        return self.folder / f"{check_ref_name(name)}{RELEASE_SUFFIX}"

    def load(self, name: str) -> bytes | None:
        """The kept document (unverified), or None; only our own regular file is read."""
        return read_regular(self.path(name), MAX_RELEASE_DOC, f"kept release {name}",
                            corrupt=FormatError, owner=os.geteuid())

    def save(self, rel: Release, doc: bytes) -> None:
        """Keep ``doc`` (already verified as ``rel``) unless a newer revision is kept."""
        with contextlib.suppress(Exception):
            old = self.load(rel.name)
            if old is not None and unverified(old).revision > rel.revision:
                return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path(rel.name), doc, self.folder, mode=0o600)


def load_verified_or_cached(source, name: str, trusted: list[str], seen: SeenRevisions | None,
                            state_dir: Path, revision: int | None = None, *,
                            now: float | None = None) -> Verified:
    """Verify ``name`` (newest, or ``revision``) from ``source`` and keep its document;
    if the source is unreachable, fall back to the kept document (verified again).

    Raises what :func:`casstore.releases.release.load_verified` raises when the source
    answers, and :class:`ServersUnreachable` when it does not and nothing usable is
    kept (no copy, another revision asked for, or its root tree is not cached).
    """
    try:
        rev, doc = newest(source, name, revision)
    except RemoteError as exc:
        return _offline(source, name, trusted, seen, state_dir, revision, now, exc)
    rel = _checked(verify(doc, trusted, now=now), name, rev)
    if seen is not None:
        seen.check(rel)
        seen.record(rel)
    LastVerified(state_dir).save(rel, doc)
    return Verified(rel)


def _checked(rel: Release, name: str, revision: int | None) -> Release:
    if rel.name != name or (revision is not None and rel.revision != revision):
        raise BadSignature(f"release document for {name} revision {revision} names "
                           f"{rel.name} revision {rel.revision} (replayed under a wrong name)")
    return rel


def _offline(source, name: str, trusted: list[str], seen: SeenRevisions | None,
             state_dir: Path, revision: int | None, now: float | None,
             exc: RemoteError) -> Verified:
    doc = LastVerified(state_dir).load(name)
    if doc is None:
        raise ServersUnreachable(f"{exc}; no verified release of {name!r} is kept for "
                                 "offline use") from None
    rel = _checked(verify(doc, trusted, now=now), name, None)
    if revision is not None and rel.revision != revision:
        raise ServersUnreachable(f"{exc}; only revision {rel.revision} of {name!r} is kept "
                                 f"for offline use, not {revision}") from None
    if seen is not None:
        seen.check(rel)
    try:  # its objects must be cached: at least the root tree, or it is no use
        for oid in [rel.root_id, *rel.variant_ids().values()]:
            source.fetch(oid, ObjType.TREE)
    except RemoteError:
        raise ServersUnreachable(f"{exc}; the kept release {name} revision {rel.revision} is "
                                 "not in the object cache") from None
    note = f"{OFFLINE_NOTE} ({name} revision {rel.revision}); servers unreachable"
    return Verified(rel, True, note)
