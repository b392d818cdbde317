"""File trees on local disk for the depot builder: walk, copy, hard-link, set mtimes,
digest, unpack package tarballs.  (Not casstore/fileio/fsutil.py, which holds the store's
atomic-write and fsync helpers.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from casstore.errors import PackageMismatch


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-directory entry below `root` (files and symlinks), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name
        for name in dirnames:  # symlinks to dirs are entries, not folders to enter
            p = Path(dirpath) / name
            if p.is_symlink():
                yield p


def rel_files(root: Path) -> set[str]:
    """Relative paths of all non-directory entries below `root`."""
    return {str(p.relative_to(root)) for p in walk_files(root)}


def set_mtimes(root: Path, epoch: int) -> None:
    """Set every entry's mtime (and atime) under `root` to `epoch`, links included.

    Directories last and deepest first, so setting a child does not bump a
    parent after it was fixed.
    """
    ns = epoch * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            os.utime(Path(dirpath) / name, ns=(ns, ns), follow_symlinks=False)
        os.utime(dirpath, ns=(ns, ns))


def tree_digest(root: Path, *, mtimes: bool = False) -> str:
    """SHA-256 over relative paths, link targets, modes, contents (and mtimes)."""
    h = hashlib.sha256()
    for p in walk_files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if mtimes:
            h.update(b"T%d" % os.lstat(p).st_mtime_ns)
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        else:
            h.update(b"F%o" % (p.stat().st_mode & 0o777))
            h.update(file_digest(p).encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_tree(src: Path, dst: Path) -> None:
    """Copy preserving symlinks and modes (mtimes are normalised later)."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link copy of `src` at `dst` (cheap work trees sharing inodes)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            s, d = Path(dirpath) / name, dst / rel / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
            else:
                os.link(s, d)


def unpack_package(source: Path, dst: Path) -> None:
    """A package folder is copied; a tarball is extracted (one top folder stripped)."""
    if source.is_dir():
        copy_tree(source, dst)
        return
    try:
        _extract(source, dst)
    except (tarfile.TarError, EOFError) as exc:  # FilterError (unsafe member) included
        why = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        raise PackageMismatch(f"{source.name}: not a usable package tarball ({why})") from None


def _extract(source: Path, dst: Path) -> None:
    with tarfile.open(source) as tar:
        members = tar.getmembers()
        tops = {m.name.split("/", 1)[0] for m in members}
        strip = len(tops) == 1 and not any(m.name == "Project.toml" for m in members)
        dst.mkdir(parents=True, exist_ok=True)
        for m in members:
            if strip:
                parts = m.name.split("/", 1)
                if len(parts) == 1:
                    continue
                m.name = parts[1]
            tar.extract(m, dst, filter="data")
