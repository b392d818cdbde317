"""Micro-architecture variants: detect the host's level, pick a variant, merge views.

A release may carry one overlay tree per CPU level (x86-64 psABI levels today;
the table leaves room for aarch64).  At mount time the best level the host can
run is chosen, falling back to the baseline, and the overlay is merged over the
root tree: overlay files replace or add, overlay directories merge.  A node is
never offered a level above what it can run.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from casstore.errors import NotFound, UsageError
from casstore.objects import ObjectId
from casstore.reader import TreeReader, root_entry
from casstore.trees import Entry, Kind

# Ordered from most to least capable within a family.
LEVELS: dict[str, list[str]] = {
    "x86_64": ["x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64"],
    "aarch64": ["aarch64"],
}
_ARCHSPEC = {"x86-64": "x86_64", "x86-64-v2": "x86_64_v2", "x86-64-v3": "x86_64_v3",
             "x86-64-v4": "x86_64_v4", "aarch64": "aarch64"}


def all_levels() -> list[str]:
    return [lvl for fam in LEVELS.values() for lvl in fam]


def host_levels() -> list[str]:
    """The levels this CPU can run, best first (archspec reads /proc/cpuinfo flags)."""
    import archspec.cpu

    host = archspec.cpu.host()
    fam = str(host.family)
    out = []
    for lvl in LEVELS.get(fam, []):
        target = archspec.cpu.TARGETS.get(_ARCHSPEC[lvl])
        if target is not None and host >= target:
            out.append(lvl)
    return out or LEVELS.get(platform.machine(), [])[-1:]


def choose(available: list[str], baseline: str | None, forced: str | None = None) -> str | None:
    """The best available level the host (or ``forced``) can run; baseline as fallback."""
    if not available:
        return None
    if forced is not None:
        if forced not in all_levels():
            raise UsageError(f"unknown CPU level {forced!r} (known: {', '.join(all_levels())})")
        runnable = _at_or_below(forced)
    else:
        runnable = host_levels()
    for lvl in runnable:
        if lvl in available:
            return lvl
    if baseline in available:
        return baseline
    raise UsageError(f"no variant this CPU can run (release has {', '.join(available)})")


def _at_or_below(level: str) -> list[str]:
    for fam in LEVELS.values():
        if level in fam:
            return fam[fam.index(level):]
    return [level]


@dataclass(frozen=True, slots=True)
class Node:
    """One path of the merged view: effective entry, overlay dir to merge, origin."""

    entry: Entry
    overlay: Entry | None = None
    variant: bool = False


class MergedView:
    """A root tree with an optional overlay tree merged over it."""

    def __init__(self, reader: TreeReader, root: ObjectId, overlay: ObjectId | None = None,
                 level: str | None = None, mtime_ns: int = 0) -> None:
        self.reader = reader
        self.level = level
        over = root_entry(overlay, mtime_ns) if overlay is not None else None
        self.root = Node(root_entry(root, mtime_ns), over, False)

    def children(self, node: Node) -> dict[bytes, Node]:
        """Merged entries of a directory node, by name (overlay wins)."""
        out: dict[bytes, Node] = {}
        if node.variant and node.entry.kind == Kind.DIR:
            return {e.name: Node(e, None, True) for e in self.reader.listdir(node.entry)}
        for e in self.reader.listdir(node.entry):
            out[e.name] = Node(e)
        if node.overlay is not None:
            for e in self.reader.listdir(node.overlay):
                out[e.name] = self._merge(out.get(e.name), e)
        return out

    def _merge(self, base: Node | None, over: Entry) -> Node:
        if over.kind == Kind.DIR and base is not None and base.entry.kind == Kind.DIR:
            return Node(base.entry, over, False)
        return Node(over, None, True)

    def child(self, node: Node, name: bytes) -> Node:
        if node.entry.kind != Kind.DIR:
            raise NotFound("not a directory")
        if node.overlay is None:
            e = self.reader.child(node.entry, name)
            return Node(e, None, node.variant)
        found = self.children(node).get(name)
        if found is None:
            raise NotFound(f"no such entry {name.decode(errors='replace')!r}")
        return found

    def lookup(self, path: str | bytes) -> Node:
        raw = path.encode() if isinstance(path, str) else path
        node = self.root
        for part in raw.split(b"/"):
            if part not in (b"", b"."):
                node = self.child(node, part)
        return node

    def listdir(self, node: Node) -> list[Node]:
        if node.overlay is None:
            return [Node(e, None, node.variant) for e in self.reader.listdir(node.entry)]
        merged = self.children(node)
        return [merged[k] for k in sorted(merged)]

    def read(self, node: Node, offset: int, size: int) -> bytes:
        return self.reader.read(node.entry, offset, size)
