"""Where a depot build takes registered package versions (and the registry) from.

Three sources, one interface: a ``registry-NAME`` release in the store (made by
``cas registry build``), a Pkg server URL (``cas serve`` or any PkgServer), or a
folder of git bundles.  Every package folder a source hands out has been checked
to hash (git tree SHA-1, as Pkg computes it) to the manifest's ``git-tree-sha1``:
the manifest is the user's word on what they ran, so nothing else may be staged
under it.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from casstore.errors import (
    CasError,
    NotFound,
    PackageFetchError,
    PackageUnavailable,
    RegistryError,
    SourceTreeMismatch,
    SpecError,
)
from casstore.julia.manifest import ManifestEntry
from casstore.pkg.content import RegistryContent
from casstore.pkg.gittree import SHA1_RE, UUID_RE, folder_tree_hash
from casstore.pkg.registry import Registry
from casstore.pkg.sources import SourceVersion, read_source
from casstore.pkg.versions import parse_version, vstr
from casstore.releases.release import load_verified
from casstore.store.restore import restore
from casstore.view.reader import TreeReader

HTTP_TIMEOUT = 120
MAX_TARBALL = 2 << 30


class PackageSource(Protocol):
    label: str

    def fetch(self, e: ManifestEntry, dest: Path) -> None:
        """Put the entry's exact tree at ``dest`` (which must not exist)."""

    def registry(self, registries: Path) -> str:
        """Write a registry folder below ``registries``; returns its name."""

    def artifact(self, owner: str, name: str, sha1: str, dest: Path) -> None:
        """Put artifact ``sha1`` (``name`` of package ``owner``) at ``dest``."""


def _check_artifact(owner: str, name: str, sha1: str, folder: Path, where: str) -> None:
    got = folder_tree_hash(folder)
    if got != sha1:
        raise SourceTreeMismatch(f"{owner}: artifact {name} from {where} hashes to {got}, "
                                 f"its Artifacts.toml says {sha1}")


def _check_tree(e: ManifestEntry, folder: Path, where: str) -> None:
    got = folder_tree_hash(folder)
    if got != e.tree_sha1:
        raise SourceTreeMismatch(f"{e.name} {e.version}: {where} gave a tree hashing to {got}, "
                                 f"the manifest says {e.tree_sha1}; fix the source or "
                                 "re-resolve the manifest against it")


def _tree_info(folder: Path, sha1: str) -> None:
    """What Pkg 1.5 writes beside a registry from a Pkg server: lets it skip updates."""
    (folder / ".tree_info.toml").write_text(f'git-tree-sha1 = "{sha1}"\n')


class StoreSource:
    """Packages and the registry from a verified ``registry-NAME`` release."""

    def __init__(self, store, release: str, trusted: list[str]):
        if not trusted:
            raise SpecError(f"sources.store = {release!r} needs a trusted key "
                            "(sources.trusted_key, or --key of the publisher)")
        self.store, self.reader = store, TreeReader(store)
        try:
            rel = load_verified(store, release, trusted, None, now=0)
        except NotFound:
            raise PackageUnavailable(f"no release {release} in the store; build it with "
                                     "`cas registry build`") from None
        self.content = RegistryContent.from_release(rel, self.reader)
        self.label = f"{release}@{rel.revision}"

    def fetch(self, e: ManifestEntry, dest: Path) -> None:
        try:
            tree = self.content.package_tree(self.reader, e.uuid, e.tree_sha1 or "")
        except NotFound:
            raise PackageUnavailable(
                f"{e.name} {e.version}: tree {e.tree_sha1} is not in {self.label}; add that "
                "version with `cas registry build`, or resolve the manifest against this "
                "registry") from None
        restore(self.store, tree, dest)
        _check_tree(e, dest, self.label)

    def artifact(self, owner: str, name: str, sha1: str, dest: Path) -> None:
        try:
            tree = self.content.artifact_tree(self.reader, sha1)
        except NotFound:
            raise PackageUnavailable(f"{owner}: artifact {name} ({sha1}) is not in "
                                     f"{self.label}; add it with `cas registry build "
                                     "--artifact DIR`") from None
        restore(self.store, tree, dest)
        _check_artifact(owner, name, sha1, dest, self.label)

    def registry(self, registries: Path) -> str:
        dest = registries / self.content.name
        registries.mkdir(parents=True, exist_ok=True)
        restore(self.store, self.content.registry_tree, dest)
        _tree_info(dest, self.content.tree_sha1)
        return self.content.name


class ServerSource:
    """Packages and the current registry from a Pkg server (``/package/{uuid}/{hash}``)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.label = self.url

    def _get(self, path: str, what: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=HTTP_TIMEOUT) as r:
                data = r.read(MAX_TARBALL + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise PackageFetchError(f"{what}: {self.url}{path} answered HTTP {exc.code}; "
                                    "retry later") from None
        except (OSError, ValueError) as exc:
            raise PackageFetchError(f"{what}: cannot reach {self.url} ({exc}); is the Pkg "
                                    "server running?") from None
        if len(data) > MAX_TARBALL:
            raise PackageFetchError(f"{what}: {self.url}{path} is larger than 2 GiB")
        return data

    def _unpack(self, data: bytes, dest: Path, what: str) -> None:
        dest.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise PackageFetchError(f"{what}: {self.url} sent a broken tarball ({exc})") from None

    def fetch(self, e: ManifestEntry, dest: Path) -> None:
        what = f"{e.name} {e.version}"
        data = self._get(f"/package/{e.uuid}/{e.tree_sha1}", what)
        if data is None:
            raise PackageUnavailable(f"{what}: {self.url} has no tree {e.tree_sha1} (404); "
                                     "register that version or resolve the manifest against "
                                     "this server's registry")
        self._unpack(data, dest, what)
        _check_tree(e, dest, self.url)

    def artifact(self, owner: str, name: str, sha1: str, dest: Path) -> None:
        what = f"{owner}: artifact {name}"
        data = self._get(f"/artifact/{sha1}", what)
        if data is None:
            raise PackageUnavailable(f"{what} ({sha1}): {self.url} does not have it (404); "
                                     "add it to the registry with --artifact")
        self._unpack(data, dest, what)
        _check_artifact(owner, name, sha1, dest, self.url)

    def registry(self, registries: Path) -> str:
        listing = self._get("/registries", "registry list")
        lines = [] if listing is None else listing.decode(errors="replace").split()
        parts = lines[0].strip("/").split("/") if lines else []
        if len(parts) != 3 or not UUID_RE.match(parts[1]) or not SHA1_RE.match(parts[2]):
            raise PackageFetchError(f"{self.url}/registries lists no registry")
        data = self._get("/" + "/".join(parts), "registry")
        if data is None:
            raise PackageFetchError(f"{self.url} lists registry {parts[2]} but has none (404)")
        with tempfile.TemporaryDirectory(dir=registries.parent) as tmp:
            folder = Path(tmp) / "r"
            self._unpack(data, folder, "registry")
            if folder_tree_hash(folder) != parts[2]:
                raise SourceTreeMismatch(f"registry from {self.url} does not hash to {parts[2]}")
            name = Registry.load(folder).name
            _tree_info(folder, parts[2])
            registries.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, registries / name)
        return name


class BundleSource:
    """Packages from a folder of git bundles (``NAME.bundle``), one tag per version.

    The registry written into the depot lists the versions taken from the bundles
    (Pkg needs some registry in a depot); it is not any server's registry, so a
    node that wants to ``Pkg.add`` more adds its site registry in its own depot.
    """

    def __init__(self, folder: Path, work: Path):
        self.folder, self.work = folder, work
        self.label = str(folder)
        self.taken: list[SourceVersion] = []

    def _bundle(self, name: str) -> Path | None:
        for cand in (self.folder / f"{name}.bundle", self.folder / name,
                     self.folder / f"{name}.jl"):
            if cand.exists():
                return cand
        return None

    def fetch(self, e: ManifestEntry, dest: Path) -> None:
        src = self._bundle(e.name)
        if src is None:
            raise PackageUnavailable(f"{e.name} {e.version}: no {e.name}.bundle in "
                                     f"{self.folder}; add its bundle or use another source")
        try:
            tags = read_source(src, self.work / e.name)
        except RegistryError as exc:
            raise PackageUnavailable(f"{e.name} {e.version}: {exc}") from None
        for sv in tags:
            if sv.tree_sha1 == e.tree_sha1 and sv.uuid == e.uuid:
                shutil.copytree(sv.folder, dest, symlinks=True)
                _check_tree(e, dest, src.name)
                self.taken.append(sv)
                return
        want = parse_version(e.version or "0.0.0")
        same = [sv for sv in tags if sv.version == want]
        if same:
            raise SourceTreeMismatch(
                f"{e.name} {e.version}: {src.name} tag {same[0].tag} has tree "
                f"{same[0].tree_sha1}, the manifest says {e.tree_sha1}; the tag was moved: "
                "use the registered bundle or re-resolve the manifest")
        have = ", ".join(vstr(sv.version) for sv in tags) or "none"
        raise PackageUnavailable(f"{e.name} {e.version}: tree {e.tree_sha1} is not in "
                                 f"{src.name} (versions: {have}); add that tag's bundle")

    def artifact(self, owner: str, name: str, sha1: str, dest: Path) -> None:
        raise PackageUnavailable(f"{owner}: artifact {name} ({sha1}) cannot come from a "
                                 "folder of bundles; take packages from a registry release "
                                 "(sources.store) or a Pkg server that has it")

    def registry(self, registries: Path) -> str:
        reg = Registry()
        for sv in self.taken:
            try:
                reg.add_version(sv.name, sv.uuid, sv.origin or "", sv.version, sv.info)
            except CasError as exc:
                raise SourceTreeMismatch(f"{sv.name}: {exc}") from None
        reg.write(registries / reg.name)
        return reg.name
