"""Marking: the reachable walk from a store's roots, as fsck and gc run it.

Neither stops at the first problem: every check appends a line naming its object
and the root that needs it, and the walk carries on.  gc refuses to sweep if
marking met anything, because whatever hangs below a damaged tree or an
unreadable root was not marked and would be deleted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from casstore.errors import CasError
from casstore.format.layout import object_path
from casstore.format.objects import ObjType, decode
from casstore.store.reachable import Node, walk
from casstore.store.reachable import roots as root_nodes
from casstore.store.roots import roots
from casstore.store.writable import Store, read_object_file, type_fits


@dataclass(frozen=True)
class Known:
    """An object fsck decoded and verified: its type, raw size and logical size."""

    kind: ObjType
    raw_size: int
    size: int  # bytes of file it stands for: the raw size, or a blob's declared total
    stored_size: int
    ctime_ns: int


@dataclass
class Marked:
    live: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class _Marker:
    """The visit of the walk; ``known`` (fsck's verified scan) enables size and type
    checks of every reference.

    Without ``known`` (gc) chunks are only checked for presence; trees and blobs
    are always read and decoded, since their children must be marked.
    """

    def __init__(self, store: Store, known: dict[bytes, Known] | None, m: Marked) -> None:
        self.store, self.known, self.m = store, known, m

    def visit(self, node: Node) -> tuple[None, Sequence[Node]]:
        oid = node.oid
        self.m.live.add(oid.digest)
        if node.kind == ObjType.CHUNK or (self.known is not None
                                          and oid.digest not in self.known):
            self.check_present(node)
            return None, ()
        try:
            stored, _st = read_object_file(object_path(self.store.root, oid))
            kind, raw = decode(oid, stored, node.kind)
            kids = node.expand(raw, kind)
        except CasError as exc:
            self.m.problems.append(self.describe(node, exc))
            return None, ()
        self.m.live.update(k.oid.digest for k in kids)
        return None, [k for k in kids if self.fits(k)]

    def describe(self, node: Node, exc: CasError) -> str:
        oid, text = node.oid, str(exc)
        if str(oid) not in text:
            text = f"object {oid}: {text}"
        if "is missing" in text:
            text = f"missing object {oid}"
        return f"{text} (needed by {node.via})"

    def check_present(self, node: Node) -> None:
        oid, via = node.oid, node.via
        if self.known is not None:
            if oid.digest in self.known:
                return
            what = ("damaged" if os.path.lexists(object_path(self.store.root, oid))
                    else "missing")
            self.m.problems.append(f"{what} object {oid} (needed by {via})")
            return
        try:
            st = os.lstat(object_path(self.store.root, oid))
        except FileNotFoundError:
            self.m.problems.append(f"missing object {oid} (needed by {via})")
            return
        if not stat.S_ISREG(st.st_mode):
            self.m.problems.append(f"object file of {oid} is not a regular file "
                                   f"(needed by {via})")

    def fits(self, node: Node) -> bool:
        """A reference's type and length must agree with its verified target.

        Returns False if the type does not fit (the target must not be walked as
        what the reference thinks it is).
        """
        info = self.known.get(node.oid.digest) if self.known is not None else None
        if info is None:
            return True
        oid, expect, need, via = node.oid, node.kind, node.need, node.via
        if not type_fits(info.kind, expect):
            self.m.problems.append(f"object {oid} is a {info.kind.name.lower()}, "
                                   f"{node.parent} expects a {expect.name.lower()} "
                                   f"(needed by {via})")
            return False
        if need is not None:
            how, n = need
            have = info.raw_size if expect == ObjType.CHUNK else info.size
            if (how == "exact" and have != n) or (how == "within" and have < n):
                wanted = f"{n} bytes" if how == "exact" else f"at least {n} bytes"
                self.m.problems.append(f"{node.parent} says {oid} has {wanted}, it has "
                                       f"{have} (needed by {via})")
        return True


def mark(store: Store, known: dict[bytes, Known] | None = None) -> Marked:
    """Walk from every root, collecting every problem instead of stopping at one."""
    m = Marked()
    marker = _Marker(store, known, m)
    starts = root_nodes(roots(store, m.problems))
    m.live.update(n.oid.digest for n in starts)
    for _visited in walk([n for n in starts if marker.fits(n)], marker.visit):
        pass
    return m
