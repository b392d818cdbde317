"""The one aiohttp application of ``cas serve``.

Each protocol is a module that adds its routes to the same app: the store layout
and push (:mod:`casstore.server.storeproto`, docs/FORMAT.md §10.2) and Julia's Pkg protocol
(:mod:`casstore.server.pkgproto`).  ``/healthz`` and ``/metrics`` (:mod:`casstore.server.metrics`)
are always there.  The app knows no CLI; ``casstore.cli.serve_cmd`` runs it, with
the runner from :func:`casstore.server.metrics.make_runner` so that ``/metrics`` counts.
"""

from __future__ import annotations

from aiohttp import web

from casstore.server.metrics import add_metrics
from casstore.server.pkgproto import PkgConfig, add_pkg_routes
from casstore.server.storeproto import StoreConfig, add_store_routes


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


def make_app(pkg: PkgConfig | None, store: StoreConfig | None = None) -> web.Application:
    """An app serving the given protocols (None: not served)."""
    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/healthz", healthz)
    add_metrics(app)
    if store is not None:
        add_store_routes(app, store)
    if pkg is not None:
        add_pkg_routes(app, pkg)
    return app
