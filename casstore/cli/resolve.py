"""Turn what a user types (``ID[/path]``, a ref name, ``NAME@REV``) into an object id."""

from __future__ import annotations

from casstore.errors import NotFound
from casstore.objects import ObjectId, is_object_id
from casstore.releases import parse_spec
from casstore.selection import release_for
from casstore.sources import ObjectSource


def split_spec(spec: str) -> tuple[str, str]:
    head, _, rest = spec.partition("/")
    return head, rest


def resolve(source: ObjectSource, head: str) -> ObjectId:
    """An object id as is; else a ref; else a release's root (``NAME`` or ``NAME@REV``).

    A release goes through :func:`casstore.selection.release_for`, which verifies
    it when the client config names trusted keys.
    """
    if is_object_id(head):
        return ObjectId.parse(head)
    ref = source.root / "refs" / head  # type: ignore[attr-defined]
    if "@" not in head and ref.is_file():
        return ObjectId.parse(ref.read_text().strip())
    name = head.partition("@")[0]
    if name in source.release_names():
        name, revision = parse_spec(head)
        return release_for(source, name, revision).root_id
    raise NotFound(f"{head!r} is not an object id, ref or release")


def resolve_spec(source: ObjectSource, spec: str) -> tuple[ObjectId, str]:
    head, path = split_spec(spec)
    return resolve(source, head), path
