"""Turn what a user types (``ID[/path]``, a ref name, ``NAME@REV``) into an object id."""

from __future__ import annotations

from casstore.errors import NotFound, StoreError
from casstore.format.objects import ObjectId, is_object_id
from casstore.sources import ObjectSource

# casstore.releases.release and casstore.client.selection (and nacl with them) are imported only
# when a release is named: `cas get ID` is a short command and start-up is a large
# share of its time.


def split_spec(spec: str) -> tuple[str, str]:
    head, _, rest = spec.partition("/")
    return head, rest


def resolve(source: ObjectSource, head: str) -> ObjectId:
    """An object id as is; else a ref; else a release's root (``NAME`` or ``NAME@REV``).

    A release goes through :func:`casstore.client.selection.release_for`, which verifies
    it when the client config names trusted keys.
    """
    if is_object_id(head):
        return ObjectId.parse(head)
    if "@" not in head:
        try:
            return source.read_ref(head)
        except (NotFound, StoreError):
            pass  # not a ref (or not even a valid ref name): maybe a release
    name = head.partition("@")[0]
    if name in source.release_names():
        from casstore.client.selection import release_for
        from casstore.releases.release import parse_spec

        name, revision = parse_spec(head)
        return release_for(source, name, revision).root_id
    raise NotFound(f"{head!r} is not an object id, ref or release")


def resolve_spec(source: ObjectSource, spec: str) -> tuple[ObjectId, str]:
    head, path = split_spec(spec)
    return resolve(source, head), path
