"""``cas cat``, ``cas ls`` and ``cas diff``: look inside stored trees.

``cat`` and ``ls`` are thin adapters over :class:`casstore.view.vfs.VFS`, the same
model the FUSE client serves; ``diff`` compares two trees object by object.
"""

from __future__ import annotations

import os
import sys
import time

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.resolve import resolve_spec
from casstore.errors import UsageError
from casstore.format.objects import ObjType
from casstore.format.trees import Entry, Kind, Storage
from casstore.sources import ObjectSource
from casstore.sources.base import stored_type
from casstore.view.reader import TreeReader, root_entry
from casstore.view.vfs import VFS, Node

_KIND = {Kind.FILE: "-", Kind.DIR: "d", Kind.SYMLINK: "l"}


def _view(source: ObjectSource, spec: str) -> tuple[VFS, Node]:
    """The VFS over the tree a spec names, and the node at its path.

    A bare chunk or blob id becomes a one-file view (a synthetic entry), so
    ``cas cat ID`` reads through the same path as a file inside a tree.
    """
    oid, sub = resolve_spec(source, spec)
    kind = stored_type(source, oid)
    if kind == ObjType.TREE:
        vfs = VFS(source, oid)
        return vfs, vfs.lookup(sub.encode("utf-8", "surrogateescape"))
    if sub:
        raise UsageError(f"{spec}: {oid} is a {kind.name.lower()}, not a tree")
    vfs = VFS(source, oid)
    reader = vfs.reader
    if kind == ObjType.BLOB:
        size, storage = reader.blob(oid).size, Storage.BLOB
    else:
        size, storage = len(reader.chunk(oid)), Storage.CHUNK
    return vfs, Node(Entry(oid.hex.encode(), Kind.FILE, 0o644, size, 0, storage, oid))


@command(cli, "cat")
@click.argument("spec")
@pass_ctx
def cat(ctx: Ctx, spec: str) -> None:
    """Write the bytes of file ID[/path] to stdout (verified chunk by chunk)."""
    vfs, node = _view(ctx.source(), spec)
    if node.entry.kind != Kind.FILE:
        raise UsageError(f"{spec} is not a regular file")
    out = sys.stdout.buffer
    for piece in vfs.iter_bytes(node):
        out.write(piece)
    out.flush()


def quote_name(raw: bytes) -> str:
    """A name safe to print, escaped as ``ls -b`` does: control characters become
    ``\\n``, ``\\t`` or ``\\xNN``, undecodable bytes ``\\xNN`` and a backslash ``\\\\``,
    so a crafted name can neither forge output lines nor drive the terminal."""
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(_ESCAPES.get(ch, f"\\x{o:02x}"))
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _describe(e: Entry) -> dict:
    d = {"name": os.fsdecode(e.name), "kind": e.kind.name.lower(), "mode": oct(e.mode),
         "size": e.size, "mtime_ns": e.mtime_ns}
    if e.storage == Storage.PACKED:
        d["pack"], d["offset"] = str(e.oid), e.offset
    elif e.oid is not None:
        d["id"] = str(e.oid)
    if e.kind == Kind.SYMLINK:
        d["target"] = os.fsdecode(e.data)
    return d


def _line(e: Entry, long: bool, shown: bytes | None = None) -> str:
    name = quote_name(shown or e.name) + ("/" if e.kind == Kind.DIR else "")
    if e.kind == Kind.SYMLINK:
        name += " -> " + quote_name(e.data)
    if not long:
        return name
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.mtime_ns // 10**9))
    return f"{_KIND[e.kind]}{e.mode:04o} {e.size:>12} {when} {name}"


@command(cli, "ls")
@click.argument("spec")
@click.option("-l", "long", is_flag=True, help="Long listing: kind, mode, size, mtime.")
@click.option("-R", "recursive", is_flag=True, help="List recursively.")
@pass_ctx
def ls(ctx: Ctx, spec: str, long: bool, recursive: bool) -> None:
    """List the directory ID[/path] (control characters in names are escaped)."""
    vfs, top = _view(ctx.source(), spec)
    if top.entry.kind != Kind.DIR:
        items = iter([(top.entry.name, top)])
    elif recursive:
        items = vfs.walk(top)
    else:
        items = ((n.entry.name, n) for n in vfs.listdir(top))
    if ctx.as_json:
        ctx.emit([dict(_describe(n.entry), path=os.fsdecode(p)) for p, n in items])
        return
    for p, n in items:
        click.echo(_line(n.entry, long, p))


@command(cli, "diff")
@click.argument("a")
@click.argument("b")
@pass_ctx
def diff(ctx: Ctx, a: str, b: str) -> None:
    """Show paths added (+), removed (-) and changed (M) from tree A to tree B.

    Exits 0 when the trees are equal and 1 when they differ, like diff(1).
    """
    source = ctx.source()
    reader = TreeReader(source)
    (oa, pa), (ob, pb) = resolve_spec(source, a), resolve_spec(source, b)
    ta, tb = reader.lookup(root_entry(oa), pa), reader.lookup(root_entry(ob), pb)
    changes = list(_diff(reader, ta, tb, b""))
    if ctx.as_json:
        ctx.emit([{"change": c, "path": os.fsdecode(p)} for c, p in changes])
    else:
        for c, p in changes:
            click.echo(f"{c} {quote_name(p)}")
    sys.exit(1 if changes else 0)


def _diff(reader: TreeReader, a: Entry, b: Entry, prefix: bytes):
    """Walk two trees together, skipping identical subtrees by id.

    Depth first in name order, with an explicit stack (no recursion limit)."""
    stack = [_diff_dir(reader, a, b, prefix)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif item[0] == "dir":
            _, x, y, path = item
            if not (x.oid == y.oid and x.kind == y.kind == Kind.DIR):
                stack.append(_diff_dir(reader, x, y, path))
        else:
            yield item


def _diff_dir(reader: TreeReader, a: Entry, b: Entry, prefix: bytes):
    ea = {e.name: e for e in reader.listdir(a)}
    eb = {e.name: e for e in reader.listdir(b)}
    for name in sorted(ea.keys() | eb.keys()):
        x, y, path = ea.get(name), eb.get(name), prefix + name
        if y is None:
            yield "-", path
        elif x is None:
            yield "+", path
        elif x.kind == y.kind == Kind.DIR:
            if x.mode != y.mode or x.mtime_ns != y.mtime_ns:
                yield "M", path + b"/"
            yield "dir", x, y, path + b"/"
        elif x != y:
            yield "M", path
