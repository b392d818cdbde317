"""Git tree SHA-1s: the names Julia's Pkg gives package, registry and artifact content.

Pkg names every tarball by the git tree hash of its unpacked files and checks it
(``Pkg.GitTools.tree_hash``): entries sorted by name with ``/`` appended to
directories, modes ``100644``/``100755``/``120000``/``40000``, directories that hold
no file (at any depth) left out, and ``.git`` skipped.  This module computes the
same hash for a folder on disk and for a store tree, so the builder can check a
checkout against its tag and the server can check what it is about to serve.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from casstore.errors import UsageError
from casstore.format.trees import Entry, Kind
from casstore.view.reader import TreeReader

SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MODE_FILE, MODE_EXEC, MODE_LINK, MODE_DIR = b"100644", b"100755", b"120000", b"40000"
READ_STEP = 4 << 20


def check_sha1(text: str) -> str:
    """A git tree hash as 40 lower-case hex digits, else a usage error."""
    if not isinstance(text, str) or not SHA1_RE.match(text):
        raise UsageError(f"not a git tree SHA-1 (40 lower-case hex digits): {text!r}")
    return text


def check_uuid(text: str) -> str:
    """A UUID in canonical lower-case form, else a usage error."""
    if not isinstance(text, str) or not UUID_RE.match(text):
        raise UsageError(f"not a canonical lower-case UUID: {text!r}")
    return text


def blob_hash_bytes(data: bytes) -> bytes:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).digest()


def tree_object_hash(entries: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """SHA-1 of a git tree object from (name, mode, 20-byte hash) triples."""
    entries = sorted(entries, key=lambda e: e[0] + b"/" if e[1] == MODE_DIR else e[0])
    body = b"".join(mode + b" " + name + b"\0" + h for name, mode, h in entries)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).digest()


def _file_blob_hash(path: str, size: int) -> bytes:
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while block := f.read(READ_STEP):
            h.update(block)
    return h.digest()


def folder_tree_hash(root: Path) -> str:
    """The git tree hash of a folder, as Pkg computes it for an unpacked tarball."""
    digest = _folder(os.fsencode(root))
    return (digest or tree_object_hash([])).hex()


def _folder(path: bytes) -> bytes | None:
    entries = []
    for name in os.listdir(path):
        if name == b".git":
            continue
        full = os.path.join(path, name)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            entries.append((name, MODE_LINK, blob_hash_bytes(os.readlink(full))))
        elif stat.S_ISDIR(st.st_mode):
            sub = _folder(full)
            if sub is not None:
                entries.append((name, MODE_DIR, sub))
        elif stat.S_ISREG(st.st_mode):
            mode = MODE_EXEC if st.st_mode & 0o100 else MODE_FILE
            entries.append((name, mode, _file_blob_hash(full, st.st_size)))
    return tree_object_hash(entries) if entries else None


def store_tree_hash(reader: TreeReader, root: Entry,
                    visit: Callable[[bytes, Entry, Callable[[], bytes]], None] | None = None
                    ) -> str:
    """The git tree hash of a store tree; every file byte read comes verified.

    ``visit(path, entry, read)`` sees each entry in tar order (parents first) so a
    caller can write a tarball in the same pass; ``read()`` yields a file's bytes
    once, which are hashed as they go by.
    """
    digest = _store_dir(reader, root, b"", visit)
    return (digest or tree_object_hash([])).hex()


def _store_dir(reader: TreeReader, d: Entry, prefix: bytes, visit) -> bytes | None:
    entries = []
    for e in reader.listdir(d):
        path = prefix + e.name
        if e.name == b".git":  # Pkg skips it at every level
            continue
        if e.kind == Kind.DIR:
            if visit:
                visit(path, e, None)
            sub = _store_dir(reader, e, path + b"/", visit)
            if sub is not None:
                entries.append((e.name, MODE_DIR, sub))
        elif e.kind == Kind.SYMLINK:
            if visit:
                visit(path, e, None)
            entries.append((e.name, MODE_LINK, blob_hash_bytes(e.data)))
        else:
            h = hashlib.sha1(b"blob %d\0" % e.size)
            pieces = _FilePieces(reader, e, h)
            if visit:
                visit(path, e, pieces)
            pieces.finish()
            mode = MODE_EXEC if e.mode & 0o100 else MODE_FILE
            entries.append((e.name, mode, h.digest()))
    return tree_object_hash(entries) if entries else None


class _FilePieces:
    """A file's bytes as a readable stream that hashes what passes through it."""

    def __init__(self, reader: TreeReader, entry: Entry, h) -> None:
        self.reader, self.entry, self.h, self.pos = reader, entry, h, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.entry.size - self.pos
        data = self.reader.read(self.entry, self.pos, min(n, READ_STEP))
        self.pos += len(data)
        self.h.update(data)
        return data

    def finish(self) -> None:
        """Hash whatever the visitor did not read (or everything, with no visitor)."""
        while self.pos < self.entry.size:
            if not self.read(READ_STEP):
                break
