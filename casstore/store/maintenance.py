"""``cas fsck`` and ``cas gc``: verify everything, rebuild the index, mark and sweep.

Both walk the same reachability graph (refs and every release revision, root and
variant trees, down to chunks).  Neither stops at the first problem: a damaged
store is exactly when an operator needs the whole list, so every check appends a
line naming its object or path and carries on.  fsck exits non-zero once, at the
end; gc refuses to sweep if marking met anything, because whatever hangs below a
damaged tree or an unreadable root was not marked and would be deleted.

gc keeps unreferenced objects younger than a grace period, so a ``put`` whose tree
is not referenced yet loses nothing, and it sweeps under the store's exclusive lock
while puts hold it shared.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from casstore.errors import CasError, GcRefused, IndexDamaged, UsageError
from casstore.fileio.fsutil import TMP_PREFIX
from casstore.format.layout import (
    MAX_RELEASE_INDEX,
    RELEASE_INDEX,
    RELEASE_SUFFIX,
    object_path,
)
from casstore.format.names import check_ref_name
from casstore.format.objects import HEADER, ObjectId, ObjType, decode, is_object_id
from casstore.format.release_index import decode_names, decode_revisions
from casstore.format.trees import Kind, Storage, decode_blob, decode_tree
from casstore.releases.release import MAX_DOC, unverified, verify
from casstore.store.index import IndexEntry
from casstore.store.writable import Store, read_object_file, type_fits

Tick = Callable[[int], None]
_MAX_REF_FILE = 4096
# What a reference demands of its target's size: ("exact", n) or ("within", end).
Need = tuple[str, int] | None


@dataclass(frozen=True)
class Known:
    """An object fsck decoded and verified: its type, raw size and logical size."""

    kind: ObjType
    raw_size: int
    size: int  # bytes of file it stands for: the raw size, or a blob's declared total
    stored_size: int
    ctime_ns: int


# -- roots ---------------------------------------------------------------------------
def _read_small(path: Path, limit: int) -> bytes:
    """Read a ref or release file as hostile input (no FIFO hang, bounded size)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(0, f"larger than {limit} bytes")
    return data


def _listdir(path: Path, problems: list[str], label: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"{label}: cannot list ({exc.strerror})")
        return []


def ref_roots(store: Store, problems: list[str]) -> Iterator[tuple[str, ObjectId]]:
    """Every readable ref; each stray, garbage or unreadable file under refs/ is a problem."""
    for name in _listdir(store.root / "refs", problems, "refs/"):
        where = f"refs/{name}"
        try:
            check_ref_name(name)
        except CasError:
            problems.append(f"{where}: stray file (not a valid ref name)")
            continue
        try:
            text = _read_small(store.root / "refs" / name, _MAX_REF_FILE).decode()
            yield f"ref {name}", ObjectId.parse(text.strip())
        except OSError as exc:
            problems.append(f"{where}: cannot read ({exc.strerror or exc})")
        except (UnicodeDecodeError, CasError):
            problems.append(f"{where}: does not hold an object id")


def release_roots(store: Store, problems: list[str]) -> Iterator[tuple[str, ObjectId]]:
    """Root and variant trees of every release revision, naming each bad file."""
    top = store.root / "releases"
    for name in _listdir(top, problems, "releases/"):
        folder = top / name
        if name == RELEASE_INDEX:
            _check_index(folder, f"releases/{name}", problems, decode_names)
            continue
        if not folder.is_dir() or folder.is_symlink():
            problems.append(f"releases/{name}: stray file (not a release folder)")
            continue
        try:
            check_ref_name(name)
        except CasError:
            problems.append(f"releases/{name}: not a valid release name")
            continue
        for fname in _listdir(folder, problems, f"releases/{name}/"):
            if fname == RELEASE_INDEX:
                _check_index(folder / fname, f"releases/{name}/{fname}", problems,
                             lambda data, what, n=name: decode_revisions(data, n, what))
                continue
            yield from _release_file(folder / fname, name, fname, problems)


def _check_index(path: Path, where: str, problems: list[str], decode) -> None:
    """A release index file (FORMAT §6.4) must parse; what it lists may run ahead or
    behind the documents (readers tolerate both), so only damage is a problem."""
    try:
        decode(_read_small(path, MAX_RELEASE_INDEX), where)
    except OSError as exc:
        problems.append(f"{where}: cannot read ({exc.strerror or exc})")
    except CasError as exc:
        problems.append(f"{where}: {exc}")


def _release_file(path: Path, name: str, fname: str,
                  problems: list[str]) -> Iterator[tuple[str, ObjectId]]:
    where = f"releases/{name}/{fname}"
    stem = fname[: -len(RELEASE_SUFFIX)] if fname.endswith(RELEASE_SUFFIX) else ""
    if len(stem) != 12 or not stem.isdigit():
        problems.append(f"{where}: stray file (not NNNNNNNNNNNN{RELEASE_SUFFIX})")
        return
    try:
        doc = _read_small(path, MAX_DOC)
        rel = unverified(doc)
    except OSError as exc:
        problems.append(f"{where}: cannot read ({exc.strerror or exc})")
        return
    except CasError as exc:
        problems.append(f"{where}: {exc}")
        return
    label = f"release {name}@{int(stem)}"
    if rel.name != name or rel.revision != int(stem):
        problems.append(f"{where}: body says {rel.name}@{rel.revision}")
    _check_signature(doc, where, problems)
    try:  # prefetch lists (FORMAT §6.5) are parsed from meta: that may fail
        trees = rel.trees()
    except CasError as exc:
        problems.append(f"{where}: {exc}")
        yield label, rel.root_id  # still keep what can be named
        return
    for what, oid in trees.items():
        yield (label if what == "root" else f"{label} {what}"), oid


def _check_signature(doc: bytes, where: str, problems: list[str]) -> None:
    """The document must verify with the key it names: integrity, not trust."""
    try:
        key = json.loads(doc).get("key")
        verify(doc, [str(key).lower()], now=-math.inf)
    except (CasError, ValueError, AttributeError, TypeError) as exc:
        problems.append(f"{where}: {exc if isinstance(exc, CasError) else 'malformed'}")


def roots(store: Store, problems: list[str]) -> list[tuple[str, ObjectId]]:
    """Every (label, tree id) that keeps objects alive."""
    return list(ref_roots(store, problems)) + list(release_roots(store, problems))


# -- the walk ------------------------------------------------------------------------
def children(kind: ObjType, raw: bytes) -> Iterator[tuple[ObjectId, ObjType, Need]]:
    """The objects one decoded tree or blob refers to, with the size each must have."""
    if kind == ObjType.TREE:
        for e in decode_tree(raw):
            if e.kind == Kind.DIR:
                yield e.oid, ObjType.TREE, None  # type: ignore[misc]
            elif e.kind == Kind.FILE and e.storage == Storage.CHUNK:
                yield e.oid, ObjType.CHUNK, ("exact", e.size)  # type: ignore[misc]
            elif e.kind == Kind.FILE and e.storage == Storage.PACKED:
                yield e.oid, ObjType.CHUNK, ("within", e.offset + e.size)  # type: ignore[misc]
            elif e.kind == Kind.FILE and e.storage == Storage.BLOB:
                yield e.oid, ObjType.BLOB, ("exact", e.size)  # type: ignore[misc]
    elif kind == ObjType.BLOB:
        for c in decode_blob(raw)[1]:
            yield c.oid, ObjType.CHUNK, ("exact", c.length)


@dataclass
class Marked:
    live: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class _Walker:
    """Marks from the roots; ``known`` (fsck's verified scan) enables size and type checks.

    Without ``known`` (gc) chunks are only checked for presence; trees and blobs
    are always read and decoded, since their children must be marked.
    """

    def __init__(self, store: Store, known: dict[bytes, Known] | None, m: Marked) -> None:
        self.store, self.known, self.m = store, known, m
        self.seen: set[tuple[bytes, bool]] = set()
        self.stack: list[tuple[ObjectId, ObjType, str, Need, str]] = []

    def run(self, tops: list[tuple[str, ObjectId]]) -> None:
        for label, top in tops:
            self.stack.append((top, ObjType.TREE, label, None, "root"))
            while self.stack:
                self.step(*self.stack.pop())

    def step(self, oid: ObjectId, expect: ObjType, via: str, need: Need, parent: str) -> None:
        self.m.live.add(oid.digest)
        fits = self.check_ref(oid, expect, via, need, parent)
        key = (oid.digest, expect != ObjType.CHUNK)
        if key in self.seen or not fits:
            return
        self.seen.add(key)
        if expect == ObjType.CHUNK or (self.known is not None
                                       and oid.digest not in self.known):
            self.check_present(oid, via)
            return
        try:
            stored, _st = read_object_file(object_path(self.store.root, oid))
            kind, raw = decode(oid, stored, expect)
            kids = list(children(kind, raw))
        except CasError as exc:
            self.m.problems.append(self.describe(oid, exc, via))
            return
        for child, ckind, cneed in reversed(kids):
            self.stack.append((child, ckind, via, cneed, f"{kind.name.lower()} {oid}"))

    def describe(self, oid: ObjectId, exc: CasError, via: str) -> str:
        text = str(exc)
        if str(oid) not in text:
            text = f"object {oid}: {text}"
        if "is missing" in text:
            text = f"missing object {oid}"
        return f"{text} (needed by {via})"

    def check_present(self, oid: ObjectId, via: str) -> None:
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

    def check_ref(self, oid: ObjectId, expect: ObjType, via: str, need: Need,
                  parent: str) -> bool:
        """A reference's type and length must agree with its verified target.

        Returns False if the type does not fit (the target must not be walked as
        what the reference thinks it is).
        """
        info = self.known.get(oid.digest) if self.known is not None else None
        if info is None:
            return True
        if not type_fits(info.kind, expect):
            self.m.problems.append(f"object {oid} is a {info.kind.name.lower()}, "
                                   f"{parent} expects a {expect.name.lower()} (needed by {via})")
            return False
        if need is not None:
            how, n = need
            have = info.raw_size if expect == ObjType.CHUNK else info.size
            if (how == "exact" and have != n) or (how == "within" and have < n):
                wanted = f"{n} bytes" if how == "exact" else f"at least {n} bytes"
                self.m.problems.append(f"{parent} says {oid} has {wanted}, it has "
                                       f"{have} (needed by {via})")
        return True


def mark(store: Store, known: dict[bytes, Known] | None = None) -> Marked:
    """Walk from every root, collecting every problem instead of stopping at one."""
    m = Marked()
    tops = roots(store, m.problems)
    _Walker(store, known, m).run(tops)
    return m


# -- fsck ----------------------------------------------------------------------------
@dataclass
class FsckReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported, but not damage
    index_rebuilt: bool = False


def fsck(store: Store, tick: Tick | None = None, rebuild_index: bool = False) -> FsckReport:
    """Verify every object file, reachability, types and sizes, and the index.

    A rebuild takes the exclusive lock, so no put records entries into the index
    being replaced; a plain check shares the lock with puts (gc cannot sweep under it).
    """
    with store.lock(exclusive=rebuild_index):
        return _fsck(store, tick or (lambda n: None), rebuild_index)


def _fsck(store: Store, tick: Tick, rebuild_index: bool) -> FsckReport:
    rep = FsckReport()
    known, present = scan_objects(store, rep, tick)
    m = mark(store, known)
    rep.problems += m.problems
    if rebuild_index:
        _rebuild_index(store, known)
        rep.index_rebuilt = True
    else:
        problems, rep.notes = compare_index(store, known, present)
        rep.problems += problems
    return rep


def scan_objects(store: Store, rep: FsckReport,
                 tick: Tick) -> tuple[dict[bytes, Known], set[bytes]]:
    """Decode every file under objects/; returns the good ones and every well-named one."""
    known: dict[bytes, Known] = {}
    present: set[bytes] = set()
    objdir = store.root / "objects"
    for sub in _listdir(objdir, rep.problems, "objects/"):
        folder = objdir / sub
        if len(sub) != 2 or not folder.is_dir() or folder.is_symlink():
            rep.problems.append(f"objects/{sub}: stray file (not an object folder)")
            continue
        for name in _listdir(folder, rep.problems, f"objects/{sub}/"):
            text = "b3-" + sub + name
            if not is_object_id(text) or text != text.lower():
                rep.problems.append(f"objects/{sub}/{name}: stray file (not an object name)")
                continue
            oid = ObjectId.parse(text)
            present.add(oid.digest)
            rep.checked += 1
            try:
                known[oid.digest] = check_object(store, oid)
            except CasError as exc:
                msg = str(exc)
                rep.problems.append("corrupt: " + (msg if str(oid) in msg
                                                   else f"object {oid}: {msg}"))
            tick(1)
    return known, present


def check_object(store: Store, oid: ObjectId) -> Known:
    """Fully verify one object file: header, hash, and a tree's or blob's structure."""
    stored, st = read_object_file(object_path(store.root, oid))
    kind, raw = decode(oid, stored)
    if HEADER.unpack_from(stored)[3] != 0:
        raise CasError(f"object {oid} has a non-zero reserved header field")
    size = len(raw)
    if kind == ObjType.TREE:
        decode_tree(raw)
    elif kind == ObjType.BLOB:
        size = decode_blob(raw)[0]
    return Known(kind, len(raw), size, len(stored), st.st_ctime_ns)


def compare_index(store: Store, known: dict[bytes, Known],
                  present: set[bytes]) -> tuple[list[str], list[str]]:
    """Drift between the index (a cache) and the object files (the truth).

    Returns (problems, notes).  Entries the index lacks are a note: a put that was
    killed or failed leaves them, and they only cost a re-check on the next reuse
    (and an under-count in ``cas stat``).  Entries that claim an absent object or the
    wrong type or size are problems: a has/size lookup would answer wrongly.
    """
    try:
        indexed = {oid.digest: e for oid, e in store.index.items()}
    except IndexDamaged as exc:
        return [f"index: {exc}"], []
    missing = [d for d in present if d not in indexed]
    if missing:  # a put running now may record them a moment later: look again
        missing = [d for d in missing if store.index.get(ObjectId(d)) is None]
    stale = [d for d in indexed if d not in present
             and not os.path.lexists(object_path(store.root, ObjectId(d)))]
    wrong = [d for d, k in known.items() if d in indexed
             and (indexed[d].kind != k.kind or indexed[d].raw_size != k.raw_size)]

    def line(ds: list[bytes], what: str) -> list[str]:
        return [f"index: {len(ds)} {what}, e.g. {ObjectId(sorted(ds)[0])}; run "
                "'cas fsck --rebuild-index'"] if ds else []

    problems = (line(stale, "entry(ies) for absent objects")
                + line(wrong, "entry(ies) with the wrong type or size"))
    return problems, line(missing, "object(s) missing from the index (a put was killed "
                                   "or failed)")


def _rebuild_index(store: Store, known: dict[bytes, Known]) -> None:
    """Recreate the index from the verified objects (marked verified) and the refs."""
    index = store.reset_index()
    index.add((ObjectId(d), IndexEntry(k.kind, k.raw_size, k.stored_size, k.ctime_ns))
              for d, k in known.items())
    for label, oid in ref_roots(store, []):
        index.set_ref(label.removeprefix("ref "), oid)


# -- gc ------------------------------------------------------------------------------
@dataclass
class GcReport:
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0
    live: int = 0
    tmp_removed: int = 0
    problems: list[str] = field(default_factory=list)


def check_grace(grace_seconds: float) -> float:
    """A grace period must be a finite, non-negative number of seconds."""
    if not math.isfinite(grace_seconds) or grace_seconds < 0:
        raise UsageError(f"grace period must be finite and >= 0, not {grace_seconds}")
    return grace_seconds


def gc(store: Store, grace_seconds: float, dry_run: bool = False,
       force: bool = False) -> GcReport:
    """Mark from roots and sweep what is unreachable and older than the grace period.

    If marking met a missing, corrupt or unreadable object or root, whatever hangs
    below it was not marked, so sweeping would delete live data: refuse unless forced.
    """
    rep = GcReport()
    cutoff = time.time() - check_grace(grace_seconds)
    with store.lock(exclusive=True):
        m = mark(store)
        rep.problems = m.problems
        rep.live = len(m.live)
        if m.problems and not force:
            raise GcRefused(f"gc found {len(m.problems)} problem(s) while marking, first: "
                            f"{m.problems[0]}; nothing deleted (run 'cas fsck' for the "
                            "full list, or 'cas gc --force' to sweep anyway)")
        doomed = _unreachable(store, m.live, cutoff, rep)
        rep.tmp_removed = _sweep_tmp(store.tmp, cutoff, dry_run)
        if not dry_run:
            for oid in doomed:
                store.delete_object(oid)
            try:
                store.index.remove(doomed)
            except IndexDamaged as exc:
                rep.problems.append(f"index: {exc}")
    return rep


def _unreachable(store: Store, live: set[bytes], cutoff: float, rep: GcReport) -> list[ObjectId]:
    doomed = []
    for oid in store.iter_object_ids():
        if oid.digest in live:
            continue
        try:
            st = os.lstat(object_path(store.root, oid))
        except FileNotFoundError:
            continue
        if st.st_mtime > cutoff:
            rep.kept_young += 1
            continue
        doomed.append(oid)
        rep.deleted += 1
        rep.deleted_bytes += st.st_size
    return doomed


def _sweep_tmp(tmpdir: Path, cutoff: float, dry_run: bool) -> int:
    """Remove temporary files left by interrupted writes."""
    n = 0
    for name in os.listdir(tmpdir):
        p = tmpdir / name
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if name.startswith(TMP_PREFIX) and stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
            n += 1
            if not dry_run:
                p.unlink(missing_ok=True)
    return n
