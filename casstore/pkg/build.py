"""``cas registry build``: package sources -> a signed registry release in the store.

Each run publishes one new revision of ``registry-NAME`` that extends the newest
one (verified with the publisher's own key first): its registry and maps are
read back, the new tags are added, and everything is rewritten and signed.  Old
revisions are never touched, so a Pkg client holding an older registry hash can
still fetch it, and every package version it lists.  Every tree that goes in is
hashed back from the store (git tree SHA-1) before it is signed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from casstore.errors import NotFound, RegistryError, TreeHashMismatch, UsageError
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import encode_tree
from casstore.pkg.content import (
    META_FORMAT,
    META_KIND,
    RegistryContent,
    dir_entry,
    encode_map,
    read_map,
    read_package_map,
)
from casstore.pkg.gittree import SHA1_RE, folder_tree_hash, store_tree_hash
from casstore.pkg.registry import GENERAL_REPO, GENERAL_UUID, Registry
from casstore.pkg.sources import expand_inputs, read_source, set_mtimes
from casstore.pkg.versions import vstr
from casstore.store.publish import own_release, publish
from casstore.store.restore import restore
from casstore.store.snapshot import Snapshot, put_paths
from casstore.store.writable import Store
from casstore.view.reader import TreeReader, root_entry


def release_name(registry: str) -> str:
    return check_ref_name(f"registry-{registry}")


@dataclass
class BuildOptions:
    name: str = "General"
    uuid: str | None = None
    repo: str | None = None
    sources: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    base: Path | None = None  # a registry folder to start from (first revision only)
    repo_urls: dict[str, str] = field(default_factory=dict)
    expires_days: float = 365.0


@dataclass
class BuildResult:
    release: str
    revision: int | None
    tree_sha1: str
    root: str
    added: list[str]
    artifacts_added: list[str]
    packages: int
    versions: int


def build(store: Store, sk: nacl.signing.SigningKey, opts: BuildOptions) -> BuildResult:
    """Add the sources' tags (and artifacts) to the registry and publish a revision."""
    relname = release_name(opts.name)
    reader = TreeReader(store)
    reg, pkgmap, artmap, prev_root = _start(store, sk, reader, relname, opts)
    added: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cas-registry-") as tmp:
        work = Path(tmp)
        known = frozenset((v, info.tree_sha1) for p in reg.packages.values()
                          for v, info in p.versions.items()
                          if (p.uuid, info.tree_sha1) in pkgmap)
        for i, src in enumerate(expand_inputs(opts.sources)):
            for sv in read_source(src, work / f"src-{i}", known):
                old = reg.packages.get(sv.uuid)
                repo = (opts.repo_urls.get(sv.name) or sv.origin or (old.repo if old else "")
                        or src.resolve().as_uri())
                if reg.add_version(sv.name, sv.uuid, repo, sv.version, sv.info):
                    added.append(f"{sv.name}@{vstr(sv.version)}")
                if (sv.uuid, sv.tree_sha1) not in pkgmap:
                    pkgmap[(sv.uuid, sv.tree_sha1)] = _put_checked(store, reader, sv.folder,
                                                                   sv.tree_sha1, sv.name)
        arts_added = []
        for art in opts.artifacts:
            if not art.is_dir():
                raise RegistryError(f"artifact {art}: not a folder")
            sha1 = folder_tree_hash(art)
            if sha1 not in artmap:
                artmap[sha1] = _put_checked(store, reader, art, sha1, f"artifact {art.name}")
                arts_added.append(sha1)
        _check_deps(reg)
        regdir = work / "registry"
        reg.write(regdir)
        set_mtimes(regdir, 0)  # same content, same tree id: no revision for nothing
        reg_sha1 = folder_tree_hash(regdir)
        reg_tree = _put_checked(store, reader, regdir, reg_sha1, "registry")
    root, pk_oid, art_oid = _put_root(store, reg_tree, pkgmap, artmap)
    result = BuildResult(relname, None, reg_sha1, str(root), added, arts_added,
                         len(reg.packages), reg.version_count())
    if prev_root == root:
        return result  # nothing new: no revision
    meta = {"kind": META_KIND, "format": META_FORMAT, "registry_name": reg.name,
            "registry_uuid": reg.uuid, "registry_tree_sha1": reg_sha1,
            "registry_tree": str(reg_tree), "packages": str(pk_oid),
            "artifacts": str(art_oid), "versions": reg.version_count(),
            "added": added[:2000], "artifacts_added": arts_added[:2000]}
    rel = publish(store, sk, relname, str(root), {}, None, meta, opts.expires_days)
    result.revision = rel.revision
    return result


def _start(store: Store, sk, reader: TreeReader, relname: str, opts: BuildOptions):
    """The registry and maps to extend: the newest own revision, a folder, or nothing."""
    try:
        revs = store.release_revisions(relname)
    except NotFound:
        revs = []
    if revs:
        if opts.base is not None:
            raise UsageError(f"{relname} already exists and is extended automatically; "
                             "--from only seeds a new registry")
        rel = own_release(store, relname, revs[-1], sk)
        rc = RegistryContent.from_release(rel, reader)
        with tempfile.TemporaryDirectory(prefix="cas-registry-") as tmp:
            restore(store, rc.registry_tree, Path(tmp) / "r")
            reg = Registry.load(Path(tmp) / "r")
        for label, want in (("uuid", opts.uuid), ("repo", opts.repo)):
            if want is not None and want != getattr(reg, label):
                raise UsageError(f"{relname} has {label} {getattr(reg, label)}; "
                                 f"it cannot change to {want}")
        return (reg, read_package_map(reader, rc.packages),
                read_map(reader, rc.artifacts, SHA1_RE), rel.root_id)
    if opts.base is not None:
        reg = Registry.load(opts.base)
        if reg.name != opts.name:
            raise UsageError(f"{opts.base} is registry {reg.name}, not {opts.name}")
    else:
        uuid = opts.uuid or GENERAL_UUID
        repo = opts.repo or (GENERAL_REPO if uuid == GENERAL_UUID else "")
        if not repo:
            raise UsageError("--repo is needed for a registry that is not General's uuid")
        reg = Registry(opts.name, uuid, repo)
    return reg, {}, {}, None


def _put_checked(store: Store, reader: TreeReader, folder: Path, sha1: str,
                 what: str) -> ObjectId:
    """Put a folder and check that the stored tree has the expected git tree hash."""
    tree = put_paths(store, [folder])
    got = store_tree_hash(reader, root_entry(tree))
    if got != sha1:
        raise TreeHashMismatch(f"{what}: the stored tree hashes to {got}, expected {sha1}")
    return tree


def _check_deps(reg: Registry) -> None:
    """Deps must be registered here or be stdlibs; a typo'd uuid is caught at build time."""
    known = set(reg.packages)
    names = {p.uuid: p.name for p in reg.packages.values()}
    for p in reg.packages.values():
        for v, info in p.versions.items():
            for dep, uuid in info.deps.items():
                if uuid in known and names[uuid] != dep:
                    raise RegistryError(f"{p.name} {vstr(v)}: dependency {dep} has uuid {uuid}, "
                                        f"which this registry calls {names[uuid]}")


def _put_root(store: Store, reg_tree: ObjectId, pkgmap: dict[tuple[str, str], ObjectId],
              artmap: dict[str, ObjectId]) -> tuple[ObjectId, ObjectId, ObjectId]:
    by_uuid: dict[str, dict[str, ObjectId]] = {}
    for (uuid, sha1), tree in pkgmap.items():
        by_uuid.setdefault(uuid, {})[sha1] = tree
    with store.lock(), Snapshot(store) as snap:
        subs = {u: snap.put_meta(ObjType.TREE, encode_map(m)) for u, m in by_uuid.items()}
        pk = snap.put_meta(ObjType.TREE, encode_map(subs))
        art = snap.put_meta(ObjType.TREE, encode_map(artmap))
        root = snap.put_meta(ObjType.TREE, encode_tree([
            dir_entry("artifacts", art), dir_entry("packages", pk),
            dir_entry("registry", reg_tree)]))
    return root, pk, art
