"""Turn what a user types (``ID[/path]``, a ref name, ``NAME@REV``) into an object id."""

from __future__ import annotations

from casstore.errors import NotFound
from casstore.objects import ObjectId, is_object_id
from casstore.releases import unverified
from casstore.remote import LocalSource


def split_spec(spec: str) -> tuple[str, str]:
    head, _, rest = spec.partition("/")
    return head, rest


def resolve(source: LocalSource, head: str) -> ObjectId:
    """An object id as is; else a ref; else a release's root (``NAME`` or ``NAME@REV``)."""
    if is_object_id(head):
        return ObjectId.parse(head)
    ref = source.root / "refs" / head
    if "@" not in head and ref.is_file():
        return ObjectId.parse(ref.read_text().strip())
    name, _, rev = head.partition("@")
    if name in source.release_names():
        revs = source.release_revisions(name)
        if rev and not rev.isdigit():
            raise NotFound(f"bad revision {rev!r} in {head!r} (use NAME@N)")
        if not revs:
            raise NotFound(f"release {name!r} has no revisions")
        revision = int(rev) if rev else revs[-1]
        return unverified(source.read_release(name, revision)).root_id
    raise NotFound(f"{head!r} is not an object id, ref or release")


def resolve_spec(source: LocalSource, spec: str) -> tuple[ObjectId, str]:
    head, path = split_spec(spec)
    return resolve(source, head), path
