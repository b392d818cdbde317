"""Turn what a user types (``ID[/path]``, a ref name, ``NAME@REV``) into an object id."""

from __future__ import annotations

from casstore.errors import NotFound, StoreError
from casstore.format.layout import ref_relpath
from casstore.format.names import check_ref_name
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
    damaged: StoreError | None = None
    if "@" not in head and _is_name(head):
        try:
            return source.read_ref(head)
        except NotFound:
            pass  # not a ref: maybe a release
        except StoreError as exc:  # the ref exists but cannot be read: say so, unless
            damaged = exc  # a release of that name is what was meant
    name = head.partition("@")[0]
    if name in source.release_names():
        from casstore.client.selection import release_for
        from casstore.releases.release import parse_spec

        name, revision = parse_spec(head)
        return release_for(source, name, revision).root_id
    if damaged is not None:
        raise type(damaged)(f"{damaged}; the file is {ref_relpath(head)} in the store, "
                            "and 'cas fsck' lists every damaged file")
    raise NotFound(f"{head!r} is not an object id, ref or release")


def _is_name(text: str) -> bool:
    try:
        check_ref_name(text)
    except StoreError:
        return False
    return True


def resolve_spec(source: ObjectSource, spec: str) -> tuple[ObjectId, str]:
    head, path = split_spec(spec)
    return resolve(source, head), path
