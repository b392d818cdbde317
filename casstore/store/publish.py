"""Publishing releases: the one place that checks a body before signing it.

``cas release create``, ``cas release rollback`` and ``cas depot build`` all come
here, so a release that verifiers would refuse (variants without the baseline,
an unknown CPU level, a root that is not a tree, an expiry that is not in the
future, a tree with missing objects) is never signed, and nothing read back from
the store is re-signed without first verifying it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import nacl.signing

from casstore.errors import CasError, NotFound, ObjectMissing, UsageError
from casstore.format.objects import ObjectId, ObjType
from casstore.releases.release import Release, check_body, expiry, load_verified, sign
from casstore.releases.variants import all_levels
from casstore.sources.base import ObjectSource, stored_type
from casstore.store.reachable import Node, roots, walk
from casstore.store.writable import Store


def next_revision(store: Store, name: str) -> int:
    """One past every revision on disk or in the index (the Store's view): a number is
    never reused, even after an interrupted publish left the index behind."""
    try:
        return store.release_revisions(name)[-1] + 1
    except (NotFound, IndexError):
        return 1


def own_release(store: Store, name: str, revision: int,
                sk: nacl.signing.SigningKey) -> Release:
    """A revision verified against the publisher's own key (expiry ignored)."""
    return load_verified(store, name, [sk.verify_key.encode().hex()], None, revision, now=0)


def latest_own(store: Store, name: str, sk: nacl.signing.SigningKey) -> Release | None:
    """The newest revision if it verifies with this key, else None."""
    try:
        return load_verified(store, name, [sk.verify_key.encode().hex()], None, now=0)
    except CasError:
        return None


def check_complete(source: ObjectSource, tops: list[tuple[str, ObjectId]]) -> int:
    """Refuse (ObjectMissing, naming the path) unless every object reachable from the
    trees ``tops`` is present; returns how many objects were checked.

    Trees and blob manifests are read (verified, with their expected type) to find
    their children; chunks are checked for presence only (``stored_size``, a HEAD
    over HTTP), as ``cas serve`` will.
    """
    def visit(node: Node) -> tuple[None, Sequence[Node]]:
        if node.kind == ObjType.CHUNK:
            if source.stored_size(node.oid) is None:
                raise ObjectMissing(f"{node.path}: object {node.oid} is missing from the "
                                    "store; refusing to sign an incomplete tree")
            return None, ()
        try:
            return None, node.expand(source.fetch(node.oid, node.kind))
        except ObjectMissing:
            raise ObjectMissing(f"{node.path}: {node.kind.name.lower()} {node.oid} is missing "
                                "from the store; refusing to sign an incomplete tree") from None

    return sum(1 for _ in walk(roots(tops), visit))


def check_publishable(store: Store, rel: Release) -> None:
    """Everything a verifier or a mount would refuse, refused before signing."""
    check_body(rel.canonical())
    for level in rel.variants:
        if level not in all_levels():
            raise UsageError(f"unknown CPU level {level!r} (known: {', '.join(all_levels())})")
    tops = list(rel.trees().items())
    for label, oid in tops:
        try:
            kind = stored_type(store, oid)
        except ObjectMissing:
            raise ObjectMissing(f"{label} {oid} is not in the store") from None
        if kind != ObjType.TREE:
            raise UsageError(f"{label} {oid} is not a tree")
    check_complete(store, tops)


def publish(store: Store, sk: nacl.signing.SigningKey, name: str, root: str,
            variants: dict[str, str], baseline: str | None, meta: dict,
            expires_days: float) -> Release:
    """Check, sign and write the next revision of ``name`` (document, then index)."""
    now = int(time.time())
    expires = expiry(now, expires_days)
    rel = Release(name, next_revision(store, name), root, now, expires,
                  variants, baseline if variants else None, meta)
    check_publishable(store, rel)
    store.write_release(rel.name, rel.revision, sign(rel, sk))
    return rel
