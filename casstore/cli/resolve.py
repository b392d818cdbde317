"""Turn what a user types (``ID[/path]``, a ref name, ``NAME@REV``) into an object id."""

from __future__ import annotations

from casstore.errors import CasError, NotFound
from casstore.names import check_ref_name
from casstore.objects import ObjectId, is_object_id
from casstore.remote import LocalSource

# casstore.releases (and nacl with it) is imported only when a release is named:
# `cas get ID` is a short command and start-up is a large share of its time.


def split_spec(spec: str) -> tuple[str, str]:
    head, _, rest = spec.partition("/")
    return head, rest


def resolve(source: LocalSource, head: str) -> ObjectId:
    """An object id as is; else a ref; else a release's root (``NAME`` or ``NAME@REV``)."""
    if is_object_id(head):
        return ObjectId.parse(head)
    if "@" not in head and _is_name(head):
        try:  # through the source, so refs of an HTTP remote resolve too
            return source.read_ref(head)
        except NotFound:
            pass
    name, _, rev = head.partition("@")
    if name in source.release_names():
        revs = source.release_revisions(name)
        if rev and not rev.isdigit():
            raise NotFound(f"bad revision {rev!r} in {head!r} (use NAME@N)")
        if not revs:
            raise NotFound(f"release {name!r} has no revisions")
        revision = int(rev) if rev else revs[-1]
        return _release_root(source, name, revision)
    raise NotFound(f"{head!r} is not an object id, ref or release")


def _is_name(text: str) -> bool:
    try:
        check_ref_name(text)
    except CasError:
        return False
    return True


def resolve_spec(source: LocalSource, spec: str) -> tuple[ObjectId, str]:
    head, path = split_spec(spec)
    return resolve(source, head), path


def _release_root(source: LocalSource, name: str, revision: int) -> ObjectId:
    """A release's root, verified when the client config names trusted keys.

    On a publishing host with no client config the document is used as is, with a
    warning: it came from this store, but a mirror's copy deserves a check.
    """
    import click

    from casstore.config import load
    from casstore.releases import load_verified, unverified

    trusted = load(None).trusted()
    if trusted:
        return load_verified(source, name, trusted, None, revision).root_id
    click.echo(f"cas: warning: release {name}@{revision} used without a signature check "
               "(no trusted_keys in the client config; see 'cas release verify')", err=True)
    return unverified(source.read_release(name, revision)).root_id
