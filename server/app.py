"""The one aiohttp application of ``cas serve``.

Each protocol is a module that adds its routes to the same app: today Julia's Pkg
protocol (:mod:`server.pkgproto`); the store layout, tokens and push of issue 9
go beside it.  The app knows no CLI; ``casstore.cli.serve_cmd`` runs it.
"""

from __future__ import annotations

from aiohttp import web

from server.pkgproto import PkgConfig, add_pkg_routes


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


def make_app(pkg: PkgConfig | None) -> web.Application:
    """An app serving the given protocols (``pkg=None``: no Pkg routes)."""
    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/healthz", healthz)
    if pkg is not None:
        add_pkg_routes(app, pkg)
    return app
