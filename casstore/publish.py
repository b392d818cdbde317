"""Publishing releases: the one place that checks a body before signing it.

``cas release create``, ``cas release rollback`` and ``cas depot build`` all come
here, so a release that verifiers would refuse (variants without the baseline,
an unknown CPU level, a root that is not a tree) is never signed, and nothing
read back from the store is re-signed without first verifying it.
"""

from __future__ import annotations

import time

import nacl.signing

from casstore.errors import CasError, NotFound, UsageError
from casstore.objects import ObjectId, ObjType
from casstore.releases import Release, check_body, sign, verify
from casstore.restore import object_type
from casstore.store import Store
from casstore.variants import all_levels

DAY = 86400


def next_revision(store: Store, name: str) -> int:
    try:
        revs = store.release_revisions(name)
    except NotFound:
        return 1
    return (revs[-1] + 1) if revs else 1


def own_release(store: Store, name: str, revision: int,
                sk: nacl.signing.SigningKey) -> Release:
    """A revision verified against the publisher's own key (expiry ignored)."""
    own = sk.verify_key.encode().hex()
    return verify(store.read_release(name, revision), [own], now=0)


def latest_own(store: Store, name: str, sk: nacl.signing.SigningKey) -> Release | None:
    """The newest revision if it verifies with this key, else None."""
    try:
        revs = store.release_revisions(name)
        return own_release(store, name, revs[-1], sk) if revs else None
    except CasError:
        return None


def check_publishable(store: Store, rel: Release) -> None:
    """Everything a verifier or a mount would refuse, refused before signing."""
    check_body(rel.canonical())
    for level in rel.variants:
        if level not in all_levels():
            raise UsageError(f"unknown CPU level {level!r} (known: {', '.join(all_levels())})")
    trees = [("root", rel.root)] + [(f"variant {k}", v) for k, v in rel.variants.items()]
    for label, text in trees:
        if object_type(store, ObjectId.parse(text)) != ObjType.TREE:
            raise UsageError(f"{label} {text} is not a tree")


def publish(store: Store, sk: nacl.signing.SigningKey, name: str, root: str,
            variants: dict[str, str], baseline: str | None, meta: dict,
            expires_days: float) -> Release:
    """Check, sign and write the next revision of ``name``."""
    now = int(time.time())
    rel = Release(name, next_revision(store, name), root, now, now + int(expires_days * DAY),
                  variants, baseline if variants else None, meta)
    check_publishable(store, rel)
    store.write_release(rel.name, rel.revision, sign(rel, sk))
    return rel
