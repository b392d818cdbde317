"""The one walk over the objects reachable from a set of trees.

fsck and gc (marking), publish (completeness before signing), push (what to
offer), pull (what to fetch) and mirror (what to copy, and ``--check``) all walk
the same graph: root and variant trees, down through trees and blob manifests to
chunks, with the edges of :func:`casstore.format.trees.children` (``edges``).  They differ
only in what they do at each object (read a file, ask a server, check a
destination), so that is the caller's *visit*; the walk owns the order, the
de-duplication and the parallelism.

* **Breadth-first, one level at a time** (:func:`walk`).  Iterative (a tree
  thousands of levels deep costs no stack), and each level's visits are independent,
  so they can run on a thread pool (``jobs``).  :func:`walk_async` keeps ``jobs``
  coroutine visits running without waiting for a level to finish (pull's fetches).
* **Each (object, role) once.**  Ids do not cover the type, so a chunk's bytes can
  equal a tree's encoding: an id met as a chunk and as a tree is visited in each
  role (FORMAT §3.3); met twice in one role, it is visited once.
* **The visit decides the children.**  It returns them (usually ``node.expand(raw)``
  of the bytes it read and verified) or none: a missing object, a chunk, or a
  tree the caller knows to be complete already (mirror's incremental runs).
* Results come back in the caller's thread, in level order, so bookkeeping needs
  no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from casstore.format.objects import ObjectId, ObjType
from casstore.format.trees import Need, edges

T = TypeVar("T")


class Node(NamedTuple):
    """One reference on the walk: the object, the type the reference needs, the root it
    was reached from (``via``), the size it demands, the referring node (``up``; None
    for a root) and the entry name there.  A tuple, and ``parent`` and ``path`` are
    only spelled out when a message needs them: a walk makes one per tree entry."""

    oid: ObjectId
    kind: ObjType
    via: str
    need: Need = None
    up: Node | None = None
    name: bytes = b""

    @property
    def key(self) -> tuple[bytes, bool]:
        """De-duplication key: the id, and whether it is read as a chunk or a node."""
        return self.oid.digest, self.kind != ObjType.CHUNK

    @property
    def parent(self) -> str:
        """The referring object, as messages name it ("root", or "tree b3-...")."""
        up = self.up
        return "root" if up is None else f"{up.kind.name.lower()} {up.oid}"

    @property
    def path(self) -> str:
        """The path below the root (``via/a/b``); a blob's chunks share its path."""
        names: list[str] = []
        node: Node | None = self
        while node is not None and node.up is not None:
            if node.name:
                names.append(node.name.decode(errors="replace"))
            node = node.up
        return "/".join([self.via, *reversed(names)])

    def expand(self, raw: bytes, kind: ObjType | None = None) -> list[Node]:
        """The children of this object, given its verified raw bytes (as ``kind``, when
        the stored type differs from the one referenced)."""
        via = self.via
        return [Node(oid, k, via, need, self, name)
                for oid, k, need, name in edges(kind or self.kind, raw)]


def roots(tops: Iterable[tuple[str, ObjectId]]) -> list[Node]:
    """The walk's starting points: labelled root trees."""
    return [Node(oid, ObjType.TREE, label) for label, oid in tops]


@dataclass(frozen=True, slots=True)
class Visited(Generic[T]):
    """What one visit found: the caller's result and the children to walk next."""

    node: Node
    result: T
    children: Sequence[Node]


Visit = Callable[[Node], tuple[T, Sequence[Node]]]


class _Frontier:
    """The walk's state: the next level and every (object, role) already taken."""

    def __init__(self, starts: Iterable[Node]) -> None:
        self.seen: set[tuple[bytes, bool]] = set()
        self.level: list[Node] = []
        self.add(starts)

    def add(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            if n.key not in self.seen:
                self.seen.add(n.key)
                self.level.append(n)

    def take(self) -> list[Node]:
        level, self.level = self.level, []
        return level


def walk(starts: Iterable[Node], visit: Visit[T], *, jobs: int = 1) -> Iterator[Visited[T]]:
    """Visit every object reachable from ``starts`` once per role; yields each visit.

    With ``jobs > 1`` a level's visits run on a thread pool (they must be thread-safe;
    the results are still yielded in this thread, in order).  An exception from a
    visit ends the walk and propagates.
    """
    frontier = _Frontier(starts)
    pool = ThreadPoolExecutor(jobs, thread_name_prefix="cas-walk") if jobs > 1 else None
    try:
        while level := frontier.take():
            results = pool.map(visit, level) if pool else map(visit, level)
            for node, (result, kids) in zip(level, results, strict=True):
                yield Visited(node, result, kids)
                frontier.add(kids)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


async def walk_async(starts: Iterable[Node], visit: Callable[[Node], Awaitable[Sequence[Node]]],
                     *, jobs: int = 8) -> int:
    """:func:`walk` for visits that are coroutines: up to ``jobs`` run at once, a new one
    starting as soon as any finishes (no barrier between levels: over a network the
    slowest fetch of a level would hold up the next).  Returns how many visits ran.
    The first failure cancels the visits still running and propagates."""
    frontier = _Frontier(starts)
    running: set[asyncio.Future[Sequence[Node]]] = set()
    count = 0
    try:
        while frontier.level or running:
            while frontier.level and len(running) < max(1, jobs):
                running.add(asyncio.ensure_future(visit(frontier.level.pop())))
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                frontier.add(task.result())
                count += 1
    except BaseException:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    return count


def reachable_ids(starts: Iterable[Node], read: Callable[[ObjectId, ObjType], bytes],
                  *, jobs: int = 1) -> list[ObjectId]:
    """Every object id reachable from ``starts`` (each once), reading trees and blob
    manifests with ``read(oid, kind)`` (verified bytes); chunks are not read."""
    def visit(node: Node) -> tuple[None, Sequence[Node]]:
        if node.kind == ObjType.CHUNK:
            return None, ()
        return None, node.expand(read(node.oid, node.kind))

    ids: dict[bytes, ObjectId] = {}
    for v in walk(starts, visit, jobs=jobs):
        ids.setdefault(v.node.oid.digest, v.node.oid)
    return list(ids.values())
