"""The store layout over HTTP (docs/FORMAT.md §10.2) and push writes (docs/HTTP.md):
the route table.  Reads are in :mod:`casstore.server.storeread`, writes in
:mod:`casstore.server.storewrite`, the model in :mod:`casstore.server.storeservice`.
"""

from __future__ import annotations

from aiohttp import web

from casstore.format.layout import FORMAT_FILE
from casstore.server import storeread as rd
from casstore.server import storewrite as wr
from casstore.server.storeservice import STORE, StoreConfig, StoreService

__all__ = ["StoreConfig", "add_store_routes"]


def add_store_routes(app: web.Application, cfg: StoreConfig) -> StoreService:
    """Attach the store layout (reads) and push (writes) to an app."""
    svc = StoreService(cfg)
    app[STORE] = svc

    async def cleanup(_app: web.Application) -> None:
        svc.close()

    app.on_cleanup.append(cleanup)
    r = app.router
    r.add_get("/objects/{xx}/{rest}", rd.get_object)
    r.add_put("/objects/{xx}/{rest}", wr.put_object)
    r.add_post("/objects/missing", wr.post_missing)
    r.add_get("/releases/_index.json", rd.get_names_index)
    r.add_get("/releases/{name}/{file}", rd.get_release_file)
    r.add_put("/releases/{name}/{file}", wr.put_release)
    r.add_get("/refs/{name}", rd.get_ref)
    r.add_get("/" + FORMAT_FILE, rd.get_format)
    return svc
