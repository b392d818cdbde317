"""The roots of a writable store: every ref and every release revision's trees.

fsck, gc and ``fsck --rebuild-index`` start here.  A damaged store is exactly when
an operator needs the whole list, so every stray, unreadable or malformed file is
appended to ``problems`` (naming its path) and the rest are still yielded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from casstore.errors import CasError, FormatError
from casstore.fileio.safeio import read_regular
from casstore.format.layout import MAX_REF, MAX_RELEASE_INDEX, RELEASE_INDEX, RELEASE_SUFFIX
from casstore.format.names import check_ref_name
from casstore.format.objects import ObjectId
from casstore.format.release_index import decode_names, decode_revisions
from casstore.releases.release import MAX_DOC, unverified, verify
from casstore.store.writable import Store


def _read_small(path: Path, limit: int) -> bytes:
    """Read a ref, release or release index file as hostile input (no symlink, no FIFO
    hang, bounded size: :func:`casstore.fileio.safeio.read_regular`)."""
    data = read_regular(path, limit, "the file", corrupt=FormatError)
    if data is None:
        raise FormatError("the file vanished while being read")
    return data


def listdir(path: Path, problems: list[str], label: str) -> list[str]:
    """Sorted names in a folder; an unreadable folder is a problem, a missing one empty."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"{label}: cannot list ({exc.strerror})")
        return []


def ref_roots(store: Store, problems: list[str]) -> Iterator[tuple[str, ObjectId]]:
    """Every readable ref; each stray, garbage or unreadable file under refs/ is a problem."""
    for name in listdir(store.root / "refs", problems, "refs/"):
        where = f"refs/{name}"
        try:
            check_ref_name(name)
        except CasError:
            problems.append(f"{where}: stray file (not a valid ref name)")
            continue
        try:
            data = _read_small(store.root / "refs" / name, MAX_REF)
        except CasError as exc:
            problems.append(f"{where}: {exc}")
            continue
        try:
            yield f"ref {name}", ObjectId.parse(data.decode().strip())
        except (UnicodeDecodeError, CasError):
            problems.append(f"{where}: does not hold an object id")


def release_roots(store: Store, problems: list[str]) -> Iterator[tuple[str, ObjectId]]:
    """Root and variant trees of every release revision, naming each bad file."""
    top = store.root / "releases"
    for name in listdir(top, problems, "releases/"):
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
        for fname in listdir(folder, problems, f"releases/{name}/"):
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
        rel = unverified(doc := _read_small(path, MAX_DOC))
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
