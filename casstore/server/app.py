"""The one aiohttp application of ``cas serve``.

Each protocol is a module that adds its routes to the same app: the store layout
and push (:mod:`casstore.server.storeproto`, docs/FORMAT.md §10.2) and Julia's Pkg protocol
(:mod:`casstore.server.pkgproto`).  ``/healthz`` and ``/metrics`` (:mod:`casstore.server.metrics`)
are always there.  The app knows no CLI; ``casstore.cli.serve_cmd`` runs it, with
the runner from :func:`casstore.server.metrics.make_runner` so that ``/metrics`` counts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from casstore.server.metrics import MATCH_KEY, add_metrics
from casstore.server.pkgproto import PkgConfig, add_pkg_routes
from casstore.server.storeproto import StoreConfig, add_store_routes

_SLASHES = re.compile(r"/{2,}")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


@web.middleware
async def merge_slashes(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Route ``//objects//xx/...`` as ``/objects/xx/...``, as nginx does (its
    ``merge_slashes``), instead of answering 404.  Only paths that matched no route
    pay for it; the handlers read their parameters with :func:`params`."""
    if "//" not in request.path or request.match_info.http_exception is None:
        return await handler(request)
    merged = request.clone(rel_url=request.rel_url.with_path(_SLASHES.sub("/", request.path)))
    match = await request.app.router.resolve(merged)
    if match.http_exception is not None:
        return await handler(request)
    request[MATCH_KEY] = merged[MATCH_KEY] = match  # the route label and the parameters
    return await match.handler(merged)


def make_app(pkg: PkgConfig | None, store: StoreConfig | None = None) -> web.Application:
    """An app serving the given protocols (None: not served)."""
    app = web.Application(client_max_size=1 << 20, middlewares=[merge_slashes])
    app.router.add_get("/healthz", healthz)
    add_metrics(app)
    if store is not None:
        add_store_routes(app, store)
    if pkg is not None:
        add_pkg_routes(app, pkg)
    return app
