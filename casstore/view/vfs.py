"""One filesystem model over a release: the FUSE client, the CLI and the server share it.

A :class:`VFS` is a root tree with an optional variant overlay merged over it
(overlay files replace or add; overlay directories merge into base directories
of the same name).  It answers path lookup, stat, read, readlink, listdir,
``user.cas.*`` xattrs and a content id per file (usable as an HTTP ETag).
Adapters (``casstore.client.fuse.ops``, ``cas cat/ls``, the HTTP server) stay thin over it.

Layers below, each replaceable: :class:`~casstore.view.reader.TreeReader` (decoded
trees, manifests and chunks, cached by bytes) over a composed object source such
as ``KnownBad(ObjectCache(LocalSource))``; large files go through an optional
:class:`~casstore.view.filecache.FileCache` (whole-file prefetch) over the same source.

Thread safety: every method may be called from several threads at once.  Nodes
are immutable; the path cache is a dict whose single operations are atomic under
the GIL and which is replaced wholesale (never mutated while iterated) when full.
"""

from __future__ import annotations

import hashlib
import stat as st
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from casstore.errors import CasError, FormatError, NotFound
from casstore.format.objects import ObjectId
from casstore.format.trees import Entry, Kind, Storage
from casstore.sources.base import ObjectSource
from casstore.view.filecache import FileCache
from casstore.view.reader import TreeReader, root_entry, walk_path

XATTR_PREFIX = "user.cas."
MAX_NODES = 100_000  # path cache entries (a few hundred bytes each)
MAX_NLINK = 100_000
ROOT_INO = 1  # the root's inode number, the same in every revision
INO_MASK = (1 << 63) - 1
MAX_INO_OWNERS = 1_000_000  # inode numbers remembered for collision detection


@dataclass(frozen=True, slots=True)
class Node:
    """One path of the merged view: effective entry, overlay dir merged into it, origin."""

    entry: Entry
    overlay: Entry | None = None
    variant: bool = False

    @property
    def kind(self) -> Kind:
        return self.entry.kind


def node_key(node: Node) -> bytes:
    """What identifies a node's content and metadata, from the tree entry alone.

    The entry's kind, size, mode, mtime and content reference (its object id, or
    inline bytes; for a packed file its pack's id and offset), plus the overlay
    directory merged into it and whether it came from a variant.  It changes
    whenever stat or bytes may, and is computed without reading any file bytes, so
    a stat never fetches a pack.  A packed file's key also changes when a sibling
    in the same pack changes (the pack's id does).  The name is not part of it
    (the path is added by :meth:`VFS.inode`)."""
    e, o = node.entry, node.overlay
    head = struct.pack("<BQIq?Q", int(e.kind), e.size, e.mode, e.mtime_ns, node.variant,
                       e.offset)
    content = e.oid.digest if e.oid is not None else e.data
    over = o.oid.digest if o is not None and o.oid is not None else b""
    return b"".join((head, struct.pack("<I", len(over)), over, content))


def stable_inode(path: bytes, key: bytes, attempt: int = 0) -> int:
    """A 63-bit inode number from (path, node key): the same in every revision and
    every mount while neither changes.  0 and 1 are never returned (1 is the root)."""
    h = hashlib.blake2b(digest_size=8, person=b"cas-ino")
    h.update(struct.pack("<IH", len(path), attempt))
    h.update(path)
    h.update(key)
    ino = int.from_bytes(h.digest(), "little") & INO_MASK
    return ino if ino > ROOT_INO else ino + 2


class Stat(NamedTuple):
    """What a stat call needs: mode (with file type bits), nlink, size, mtime.

    A NamedTuple, not a frozen dataclass: it is built on every getattr."""

    mode: int
    nlink: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ViewInfo:
    """What is shown: in xattrs, the status file and server headers."""

    release: str
    revision: int
    level: str | None
    root: str


class VFS:
    """The merged, read-only view of one release (see the module docstring)."""

    def __init__(self, reader: TreeReader | ObjectSource, root: ObjectId,
                 overlay: ObjectId | None = None, *, info: ViewInfo | None = None,
                 mtime_ns: int = 0, cache: FileCache | None = None,
                 max_nodes: int = MAX_NODES) -> None:
        self.reader = reader if isinstance(reader, TreeReader) else TreeReader(reader)
        self.info = info or ViewInfo("", 0, None, str(root))
        self.cache = cache
        over = root_entry(overlay, mtime_ns) if overlay is not None else None
        self.root = Node(root_entry(root, mtime_ns), over, False)
        self.max_nodes = max_nodes
        self._nodes: dict[str | bytes, Node] = self._seed()
        self._children: dict[tuple, Node] = {}
        self._nlink: dict[tuple, int] = {}
        self._inos: dict[str | bytes, int] = {}  # path -> inode (bounded like _nodes)
        self._ino_owner: dict[int, bytes] = {}  # inode -> path + key, for collisions
        self.ino_collisions = 0

    def _seed(self) -> dict[str | bytes, Node]:
        return {"/": self.root, b"/": self.root, "": self.root, b"": self.root}

    @property
    def level(self) -> str | None:
        return self.info.level

    # -- lookup ------------------------------------------------------------------
    def lookup(self, path: str | bytes) -> Node:
        """The node at ``path`` (str paths are fs-encoded), via a bounded path cache.

        A miss whose parent path is cached is one child step; any other miss is
        walked from the root by :func:`casstore.view.reader.walk_path`, the one walk,
        through a cache of child steps keyed by directory identity.
        """
        hit = self._nodes.get(path)
        if hit is not None:
            return hit
        parent_path, sep, name = path.rpartition("/" if isinstance(path, str) else b"/")
        parent = self._nodes.get(parent_path or sep) if name not in ("", ".", b"", b".") else None
        if parent is not None:  # the common case: the kernel looked the parent up first
            raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
            node = self._cached_child(parent, raw)
        else:
            node = walk_path(self.root, path, self._cached_child)
        if len(self._nodes) >= self.max_nodes:
            self._nodes = self._seed()
        self._nodes[path] = node
        return node

    def _cached_child(self, node: Node, name: bytes) -> Node:
        e, o = node.entry, node.overlay
        # The kind too: a file whose bytes equal a tree's encoding has the tree's id.
        # Digests, not ObjectIds: bytes hash in C and cache their hash.
        key = (e.kind, e.oid.digest if e.oid is not None else None,
               o.oid.digest if o is not None and o.oid is not None else None, node.variant, name)
        hit = self._children.get(key)
        if hit is None:
            hit = self.child(node, name)
            if len(self._children) >= self.max_nodes:
                self._children = {}
            self._children[key] = hit
        return hit

    def child(self, node: Node, name: bytes) -> Node:
        """One step down: the overlay wins; directories in both merge."""
        if node.entry.kind != Kind.DIR:
            raise NotFound(f"{name.decode(errors='replace')}: parent is not a directory")
        if node.overlay is not None:
            over = self.reader.dir_of(node.overlay).get(name)
            if over is not None:
                if over.kind == Kind.DIR:
                    base = self.reader.dir_of(node.entry).get(name)
                    if base is not None and base.kind == Kind.DIR:
                        return Node(base, over, False)
                return Node(over, None, True)
        found = self.reader.dir_of(node.entry).get(name)
        if found is None:
            raise NotFound(f"no such entry {name.decode(errors='replace')!r}")
        return Node(found, None, node.variant)

    # -- listing -----------------------------------------------------------------
    def names(self, node: Node) -> list[bytes]:
        """Child names in byte order; cheap (no entry is decoded for a plain dir)."""
        base = self.reader.dir_of(node.entry).names()
        if node.overlay is None:
            return base
        return sorted(set(base).union(self.reader.dir_of(node.overlay).names()))

    def iter_names(self, node: Node, start: int = 0) -> Iterator[bytes]:
        """Like :meth:`names` from index ``start``, without building the list (a
        million-entry readdir is served a page at a time)."""
        d = self.reader.dir_of(node.entry)
        if node.overlay is not None:
            return iter(self.names(node)[start:])
        return map(d.name, range(start, len(d)))

    def listdir(self, node: Node) -> list[Node]:
        """Child nodes in byte order (decodes every entry: prefer :meth:`names`)."""
        d = self.reader.dir_of(node.entry)
        if node.overlay is None:
            return [Node(e, None, node.variant) for e in d.iter_entries()]
        return [self.child(node, name) for name in self.names(node)]

    def walk(self, node: Node, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Every (path, node) below a directory, parents first; iterative, so a
        crafted tree thousands of levels deep cannot exhaust the Python stack."""
        stack = [(prefix, iter(self.listdir(node)))]
        while stack:
            pre, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                continue
            path = pre + child.entry.name
            yield path, child
            if child.entry.kind == Kind.DIR:
                stack.append((path + b"/", iter(self.listdir(child))))

    # -- attributes --------------------------------------------------------------
    def stat(self, node: Node) -> Stat:
        e = node.entry
        if e.kind == Kind.FILE:
            return Stat(st.S_IFREG | e.mode, 1, e.size, e.mtime_ns)
        if e.kind == Kind.DIR:
            return Stat(st.S_IFDIR | e.mode, self.nlink(node), 4096, e.mtime_ns)
        return Stat(st.S_IFLNK | 0o777, 1, e.size, e.mtime_ns)

    def nlink(self, node: Node) -> int:
        """2 + subdirectories, as on a local filesystem (find relies on it)."""
        key = (node.entry.oid, node.overlay.oid if node.overlay else None, node.variant)
        n = self._nlink.get(key)
        if n is None:
            if node.overlay is None:
                n = 2 + self.reader.dir_of(node.entry).n_subdirs()
            else:
                n = 2 + sum(1 for c in self.listdir(node) if c.entry.kind == Kind.DIR)
            if len(self._nlink) >= MAX_NLINK:
                self._nlink = {}
            self._nlink[key] = n
        return n

    def readlink(self, node: Node) -> bytes:
        if node.entry.kind != Kind.SYMLINK:
            raise NotFound(f"{node.entry.name.decode(errors='replace')!r} is not a symlink")
        return node.entry.data

    # -- data --------------------------------------------------------------------
    def read(self, node: Node, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, every one from a verified object.

        Large stored files come from the FileCache's verified copy when it has
        the range; anything else (and any cache miss) from the TreeReader.
        """
        e = node.entry
        if e.kind != Kind.FILE:
            raise FormatError("not a regular file")
        if self.cache is not None and self.cache.wants(e):
            assert e.oid is not None
            got = self.cache.read(e.oid, e.size, offset, size,
                                  lambda: self.reader.layout(e))
            if got is not None:
                return got
        return self.reader.read(e, offset, size)

    def iter_bytes(self, node: Node, piece: int = 4 << 20) -> Iterator[bytes]:
        """A file's bytes in order, ``piece`` at a time (what ``cas cat`` streams)."""
        size = node.entry.size
        for off in range(0, size, piece):
            yield self.read(node, off, piece)

    def content_id(self, node: Node) -> str:
        """The object id of a file or dir; for inline and packed files, the id its
        bytes would have (BLAKE3 of the content, the chunk id it would get if stored
        as one chunk).  Immutable per content: usable as an HTTP ETag."""
        e = node.entry
        if e.storage == Storage.PACKED:
            return str(ObjectId.of(self.reader.read(e, 0, e.size)))
        if e.oid is not None:
            return str(e.oid)
        return str(ObjectId.of(e.data))  # inline file (or symlink target)

    def xattrs(self, node: Node, with_id: bool = True) -> dict[str, bytes]:
        """``user.cas.*`` for a node (CVMFS-style): ids, release, revision, variant.

        ``with_id=False`` gives ``user.cas.id`` as empty bytes: listing names must
        not read and hash a packed file just to compute a value nobody asked for.
        """
        out = {"id": self.content_id(node) if with_id else "",
               "release": self.info.release, "revision": str(self.info.revision)}
        if node.entry.kind == Kind.FILE:
            out["storage"] = (node.entry.storage or Storage.INLINE).name.lower()
        if node.variant:
            out["variant"] = self.info.level or ""
        if node.entry.name == b"":  # the root (every other entry has a name)
            out["level"] = self.info.level or "none"
            out["root"] = self.info.root
        return {XATTR_PREFIX + k: v.encode() for k, v in out.items()}

    def cached_paths(self) -> int:
        return len(self._nodes)

    def known_paths(self) -> list[str | bytes]:
        """The paths in the path cache (what the kernel may hold entries for)."""
        return [p for p in list(self._nodes) if p not in ("", b"")]

    # -- inode numbers -----------------------------------------------------------
    def inode(self, path: str | bytes, node: Node | None = None) -> int:
        """The stable inode number of ``path`` (see :func:`stable_inode`).

        A collision with a different (path, key) already handed out by this VFS
        is resolved by rehashing with an attempt counter; only then does the
        number depend on the order of lookups (docs/CLIENT.md, "Inode numbers").
        """
        hit = self._inos.get(path)
        if hit is not None:
            return hit
        raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
        raw = b"/" + raw.strip(b"/")
        if raw == b"/":
            return ROOT_INO
        node = node if node is not None else self.lookup(path)
        key = self.node_key(node)
        ident = raw + b"\0" + key
        for attempt in range(64):
            ino = stable_inode(raw, key, attempt)
            owner = self._ino_owner.get(ino)
            if owner is None or owner == ident:
                break
            self.ino_collisions += 1
        if len(self._ino_owner) >= MAX_INO_OWNERS:
            self._ino_owner = {}
        self._ino_owner[ino] = ident
        if len(self._inos) >= self.max_nodes:
            self._inos = {}
        self._inos[path] = ino
        return ino

    def node_key(self, node: Node) -> bytes:
        """:func:`node_key` (metadata only: no file bytes are read)."""
        return node_key(node)

    def changed_paths(self, other: VFS) -> list[str | bytes]:
        """Paths known to this VFS whose node differs (or is gone) in ``other``:
        what the kernel must forget when ``other`` replaces this view."""
        out = []
        for path in self.known_paths():
            old = self._nodes.get(path)
            try:
                new = other.lookup(path)
            except CasError:  # gone, or unreadable: either way not the old node
                out.append(path)
                continue
            if old is None or self.node_key(old) != other.node_key(new):
                out.append(path)
        return out
