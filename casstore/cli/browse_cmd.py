"""``cas cat``, ``cas ls`` and ``cas diff``: look inside stored trees."""

from __future__ import annotations

import os
import sys
import time

import click

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.cli.resolve import resolve_spec
from casstore.errors import UsageError
from casstore.objects import ObjType
from casstore.reader import TreeReader, root_entry
from casstore.restore import Restorer
from casstore.sources.base import stored_type
from casstore.trees import Entry, Kind, Storage

_KIND = {Kind.FILE: "-", Kind.DIR: "d", Kind.SYMLINK: "l"}


@command(cli, "cat")
@click.argument("spec")
@pass_ctx
def cat(ctx: Ctx, spec: str) -> None:
    """Write the bytes of file ID[/path] to stdout (verified chunk by chunk)."""
    source = ctx.source()
    oid, sub = resolve_spec(source, spec)
    kind = stored_type(source, oid)
    r = Restorer(source)
    try:
        if kind == ObjType.TREE:
            e = TreeReader(source).lookup(root_entry(oid), sub)
            if e.kind != Kind.FILE:
                raise UsageError(f"{spec} is not a regular file")
            pieces = r.file_pieces(e.storage, e.oid, e.data, e)  # type: ignore[arg-type]
        else:
            pieces = r.file_pieces(Storage.BLOB if kind == ObjType.BLOB else Storage.CHUNK,
                                   oid, b"")
        out = sys.stdout.buffer
        for piece in pieces:
            out.write(piece)
        out.flush()
    finally:
        r.close()


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
    name = os.fsdecode(shown or e.name) + ("/" if e.kind == Kind.DIR else "")
    if e.kind == Kind.SYMLINK:
        name += " -> " + os.fsdecode(e.data)
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
    """List the directory ID[/path]."""
    source = ctx.source()
    oid, sub = resolve_spec(source, spec)
    reader = TreeReader(source)
    top = reader.lookup(root_entry(oid), sub)
    if top.kind != Kind.DIR:
        items = [(top.name, top)]
    elif recursive:
        items = list(reader.walk(top))
    else:
        items = [(e.name, e) for e in reader.listdir(top)]
    if ctx.as_json:
        ctx.emit([dict(_describe(e), path=os.fsdecode(p)) for p, e in items])
        return
    for p, e in items:
        click.echo(_line(e, long, p))


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
            click.echo(f"{c} {os.fsdecode(p)}")
    sys.exit(1 if changes else 0)


def _diff(reader: TreeReader, a: Entry, b: Entry, prefix: bytes):
    """Walk two trees together, skipping identical subtrees by id."""
    if a.oid == b.oid and a.kind == b.kind == Kind.DIR:
        return
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
            yield from _diff(reader, x, y, path + b"/")
        elif x != y:
            yield "M", path
