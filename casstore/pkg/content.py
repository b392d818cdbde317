"""The content of a registry release: the registry tree and the git-hash maps.

A registry release's root tree (docs/FORMAT.md, "Julia registries") is::

    registry/                 the registry folder Pkg downloads
    packages/<uuid>/<sha1>/   each package version, keyed by its git tree SHA-1
    artifacts/<sha1>/         each artifact, keyed by its git tree SHA-1

so the maps from git tree SHA-1 to store tree are ordinary trees, signed with the
release and kept alive by gc like any release content.  This module builds those
map trees and looks things up in them; it trusts nothing it reads (names must be
canonical uuids and hashes, the meta must match the tree).
"""

from __future__ import annotations

from dataclasses import dataclass

from casstore.errors import FormatError, NotFound
from casstore.format.objects import ObjectId
from casstore.format.trees import Entry, Kind, encode_tree
from casstore.pkg.gittree import SHA1_RE, UUID_RE
from casstore.releases.release import Release
from casstore.view.reader import TreeReader, root_entry

META_KIND = "julia-registry"
META_FORMAT = 1
DIR_MODE = 0o755


def dir_entry(name: str, oid: ObjectId) -> Entry:
    return Entry(name.encode(), Kind.DIR, DIR_MODE, 0, 0, None, oid)


def encode_map(items: dict[str, ObjectId]) -> bytes:
    """A map tree: one directory entry per key (a uuid or a git hash)."""
    return encode_tree(dir_entry(k, v) for k, v in items.items())


def read_map(reader: TreeReader, oid: ObjectId, pattern) -> dict[str, ObjectId]:
    """A map tree back as a dict; any entry that is not a canonical key is an error."""
    out = {}
    for e in reader.listdir(root_entry(oid)):
        key = e.name.decode(errors="replace")
        if e.kind != Kind.DIR or e.oid is None or not pattern.match(key):
            raise FormatError(f"map tree {oid} holds a bad entry {key!r}")
        out[key] = e.oid
    return out


def read_package_map(reader: TreeReader, oid: ObjectId) -> dict[tuple[str, str], ObjectId]:
    out = {}
    for uuid, sub in read_map(reader, oid, UUID_RE).items():
        for sha1, tree in read_map(reader, sub, SHA1_RE).items():
            out[(uuid, sha1)] = tree
    return out


@dataclass(frozen=True)
class RegistryContent:
    """What a verified registry release offers, validated."""

    release: str
    revision: int
    name: str
    uuid: str
    tree_sha1: str
    registry_tree: ObjectId
    packages: ObjectId
    artifacts: ObjectId

    @classmethod
    def from_release(cls, rel: Release, reader: TreeReader) -> RegistryContent:
        """Parse and cross-check a release's meta against its root tree."""
        m = rel.meta
        try:
            if m.get("kind") != META_KIND or m.get("format") != META_FORMAT:
                raise ValueError
            rc = cls(rel.name, rel.revision, str(m["registry_name"]), str(m["registry_uuid"]),
                     str(m["registry_tree_sha1"]), ObjectId.parse(m["registry_tree"]),
                     ObjectId.parse(m["packages"]), ObjectId.parse(m["artifacts"]))
        except (ValueError, KeyError, TypeError, FormatError):
            raise FormatError(f"release {rel.name}@{rel.revision} is not a Julia registry "
                              "release (bad meta)") from None
        if not UUID_RE.match(rc.uuid) or not SHA1_RE.match(rc.tree_sha1):
            raise FormatError(f"release {rel.name}@{rel.revision}: bad registry uuid or hash")
        root = {e.name: e for e in reader.listdir(root_entry(rel.root_id))}
        for name, want in ((b"registry", rc.registry_tree), (b"packages", rc.packages),
                           (b"artifacts", rc.artifacts)):
            got = root.get(name)
            if got is None or got.kind != Kind.DIR or got.oid != want:
                raise FormatError(f"release {rel.name}@{rel.revision}: meta and root tree "
                                  f"disagree about {name.decode()}/")
        return rc

    def package_tree(self, reader: TreeReader, uuid: str, sha1: str) -> ObjectId:
        """The store tree of a package version, or NotFound."""
        try:
            sub = reader.child(root_entry(self.packages), uuid.encode())
            e = reader.child(sub, sha1.encode())
        except NotFound:
            raise NotFound(f"package {uuid} tree {sha1} is not in {self.release}") from None
        if e.kind != Kind.DIR or e.oid is None:
            raise FormatError(f"package map of {self.release} has a non-directory entry")
        return e.oid

    def artifact_tree(self, reader: TreeReader, sha1: str) -> ObjectId:
        try:
            e = reader.child(root_entry(self.artifacts), sha1.encode())
        except NotFound:
            raise NotFound(f"artifact {sha1} is not in {self.release}") from None
        if e.kind != Kind.DIR or e.oid is None:
            raise FormatError(f"artifact map of {self.release} has a non-directory entry")
        return e.oid
