"""``cas stat``: what the store holds."""

from __future__ import annotations

from casstore.cli.common import Ctx, command, pass_ctx
from casstore.cli.main import cli
from casstore.errors import NotFound
from casstore.releases.release import newest


@command(cli, "stat")
@pass_ctx
def stat_cmd(ctx: Ctx) -> None:
    """Object count, raw and stored bytes, refs and releases (from the index)."""
    store = ctx.open_store()
    count, raw, stored = store.index.stats()
    releases = {}
    for name in store.release_names():
        try:
            releases[name] = newest(store, name)[0]  # newest listed with a document
        except NotFound:
            continue
    data = {"store": str(store.root), "objects": count, "raw_bytes": raw,
            "stored_bytes": stored, "refs": {k: str(v) for k, v in store.refs().items()},
            "releases": releases}
    ratio = f"{raw / stored:.2f}x" if stored else "-"
    text = (f"store:    {store.root}\nobjects:  {count}\nraw:      {raw} bytes\n"
            f"stored:   {stored} bytes (compression {ratio})\nrefs:     {len(data['refs'])}\n"
            f"releases: {', '.join(f'{k}@{v}' for k, v in releases.items()) or 'none'}")
    ctx.emit(data, text)
